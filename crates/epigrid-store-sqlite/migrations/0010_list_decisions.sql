-- The review queue of a list: a person confirms or rejects an uncertain match.
ALTER TABLE list_matches ADD COLUMN decision TEXT;
ALTER TABLE list_matches ADD COLUMN decided_by TEXT;
ALTER TABLE list_matches ADD COLUMN decided_at INTEGER;
