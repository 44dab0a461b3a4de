-- Lists from other agencies (passenger lists, arrivals from risk regions) matched against the
-- people epigrid knows (比对). Raw personal values of a list are not stored: only what was
-- matched, how, and how sure.
CREATE TABLE lists (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL,
    uploaded_by UUID,
    area_path   TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    rows        INTEGER NOT NULL,
    bad_rows    INTEGER NOT NULL
);
CREATE TABLE list_matches (
    list_id    UUID NOT NULL REFERENCES lists(id),
    line       INTEGER NOT NULL,
    person_id  UUID NOT NULL REFERENCES persons(id),
    method     TEXT NOT NULL,
    confidence DOUBLE PRECISION NOT NULL,
    review     BOOLEAN NOT NULL,
    PRIMARY KEY (list_id, line, person_id)
);
