-- Merging duplicate persons (audited, reversible): the merged record points at the one kept.
CREATE TABLE person_merges (
    id          UUID PRIMARY KEY,
    from_person UUID NOT NULL REFERENCES persons(id),
    into_person UUID NOT NULL REFERENCES persons(id),
    at          TIMESTAMPTZ NOT NULL,
    by_user     UUID,
    by_username TEXT NOT NULL,
    reason      TEXT NOT NULL,
    undone_at   TIMESTAMPTZ
);
CREATE INDEX persons_merged_into ON persons(merged_into) WHERE merged_into IS NOT NULL;
