-- Proximity records imported from contact tokens or studies: two people near each other.
CREATE TABLE proximity (
    id         UUID PRIMARY KEY,
    a          UUID NOT NULL REFERENCES persons(id),
    b          UUID NOT NULL REFERENCES persons(id),
    at         TIMESTAMPTZ NOT NULL,
    duration_s INTEGER NOT NULL CHECK (duration_s > 0),
    source     TEXT NOT NULL
);
CREATE INDEX proximity_at ON proximity(at);
