-- Which people were seen with which vehicle plate, once per pair: plate search and list
-- matching read this instead of an index over every registration's plate (a returning
-- driver costs one lookup, not one more index entry per registration).
CREATE TABLE person_plates (
    plate     TEXT NOT NULL,
    person_id TEXT NOT NULL REFERENCES persons(id),
    first_at  INTEGER NOT NULL,
    PRIMARY KEY (plate, person_id)
) WITHOUT ROWID;
INSERT OR IGNORE INTO person_plates (plate, person_id, first_at)
    SELECT plate, person_id, MIN(at) FROM registrations WHERE plate IS NOT NULL GROUP BY plate, person_id;
DROP INDEX IF EXISTS registrations_plate;
