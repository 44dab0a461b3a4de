-- Merging duplicate persons (audited, reversible): the merged record points at the one kept.
CREATE TABLE person_merges (
    id          TEXT PRIMARY KEY,
    from_person TEXT NOT NULL REFERENCES persons(id),
    into_person TEXT NOT NULL REFERENCES persons(id),
    at          INTEGER NOT NULL,
    by_user     TEXT,
    by_username TEXT NOT NULL,
    reason      TEXT NOT NULL,
    undone_at   INTEGER
);
CREATE INDEX persons_merged_into ON persons(merged_into) WHERE merged_into IS NOT NULL;
