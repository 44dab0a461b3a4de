-- Registrations of one site are found through their area (area_path, seq), which the site
-- shares with few others: one secondary index fewer to keep up on every registration.
DROP INDEX IF EXISTS registrations_site_at;
