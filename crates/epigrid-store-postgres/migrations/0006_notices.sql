-- Contact-search notices (协查通告): the places and time spans a case visited, published
-- without personal data, and the people who come forward ("I was there"), pending review.
CREATE TABLE notices (
    id             UUID PRIMARY KEY,
    case_person_id UUID NOT NULL REFERENCES persons(id),
    public_token   TEXT NOT NULL UNIQUE,
    area_path      TEXT NOT NULL,
    created_by     UUID,
    created_at     TIMESTAMPTZ NOT NULL
);
CREATE TABLE notice_entries (
    notice_id UUID NOT NULL REFERENCES notices(id),
    position  INTEGER NOT NULL,
    site_id   UUID NOT NULL REFERENCES sites(id),
    place     TEXT NOT NULL,
    area_name TEXT NOT NULL,
    from_at   TIMESTAMPTZ NOT NULL,
    to_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (notice_id, position)
);
CREATE TABLE pending_contacts (
    id              UUID PRIMARY KEY,
    notice_id       UUID NOT NULL REFERENCES notices(id),
    position        INTEGER NOT NULL,
    index_person_id UUID NOT NULL REFERENCES persons(id),
    person_id       UUID NOT NULL REFERENCES persons(id),
    reported_at     TIMESTAMPTZ NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending'
);
CREATE INDEX pending_contacts_notice ON pending_contacts(notice_id);
