-- Search by part of a Chinese name: every single character and every pair of neighbouring
-- characters of each name, so "晓明" finds 欧阳晓明 through an index instead of a scan.
CREATE TABLE person_grams (
    gram      TEXT NOT NULL,
    person_id TEXT NOT NULL REFERENCES persons(id),
    PRIMARY KEY (gram, person_id)
) WITHOUT ROWID;
CREATE INDEX person_grams_person ON person_grams(person_id);
WITH RECURSIVE pos(id, name, i) AS (
    SELECT id, name, 1 FROM persons
    UNION ALL SELECT id, name, i + 1 FROM pos WHERE i < length(name)
)
INSERT OR IGNORE INTO person_grams (gram, person_id)
SELECT substr(name, i, 1), id FROM pos
UNION SELECT substr(name, i, 2), id FROM pos WHERE i < length(name);
