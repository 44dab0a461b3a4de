-- A registration keeps the phone number it was made with. A person's stored number and area
-- follow their latest registration only while nobody manages them (no home area, category
-- 'none', no open observation): an unverified self-registration with someone else's ID number
-- cannot redirect a managed person's calls or move them out of their grid worker's area.
-- Older registrations have NULL here and show the person's number.
ALTER TABLE registrations ADD COLUMN phone_cipher BLOB;
ALTER TABLE registrations ADD COLUMN phone_masked TEXT;
