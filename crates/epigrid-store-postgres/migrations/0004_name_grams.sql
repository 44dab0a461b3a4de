-- Search by part of a Chinese name: every single character and every pair of neighbouring
-- characters of each name, so "晓明" finds 欧阳晓明 through an index instead of a scan.
CREATE TABLE person_grams (
    gram      TEXT NOT NULL,
    person_id UUID NOT NULL REFERENCES persons(id),
    PRIMARY KEY (gram, person_id)
);
CREATE INDEX person_grams_person ON person_grams(person_id);
INSERT INTO person_grams (gram, person_id)
SELECT DISTINCT substr(p.name, i, n), p.id
FROM persons p, generate_series(1, char_length(p.name)) AS i, (VALUES (1), (2)) AS len(n)
WHERE i + n - 1 <= char_length(p.name)
ON CONFLICT DO NOTHING;
