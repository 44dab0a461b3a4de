-- A person's whole birth date is kept only as a blind index (for matching lists by name and
-- birth date); birth_date keeps the year. The dates stored before are turned into an index
-- and a year by the server at start, where the key is (Store::seal_birth_dates).
ALTER TABLE persons ADD COLUMN birth_index BYTEA;
-- The people still to convert, found at every start without reading the whole table (empty
-- once converted: new people never match).
CREATE INDEX persons_birth_unsealed ON persons(id) WHERE birth_index IS NULL AND birth_date IS NOT NULL;
