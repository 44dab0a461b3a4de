-- Contact-search notices (协查通告): the places and time spans a case visited, published
-- without personal data, and the people who come forward ("I was there"), pending review.
CREATE TABLE notices (
    id             TEXT PRIMARY KEY,
    case_person_id TEXT NOT NULL REFERENCES persons(id),
    public_token   TEXT NOT NULL UNIQUE,
    area_path      TEXT NOT NULL,
    created_by     TEXT,
    created_at     INTEGER NOT NULL
);
CREATE TABLE notice_entries (
    notice_id TEXT NOT NULL REFERENCES notices(id),
    position  INTEGER NOT NULL,
    site_id   TEXT NOT NULL REFERENCES sites(id),
    place     TEXT NOT NULL,
    area_name TEXT NOT NULL,
    from_at   INTEGER NOT NULL,
    to_at     INTEGER NOT NULL,
    PRIMARY KEY (notice_id, position)
);
CREATE TABLE pending_contacts (
    id              TEXT PRIMARY KEY,
    notice_id       TEXT NOT NULL REFERENCES notices(id),
    position        INTEGER NOT NULL,
    index_person_id TEXT NOT NULL REFERENCES persons(id),
    person_id       TEXT NOT NULL REFERENCES persons(id),
    reported_at     INTEGER NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending'
);
CREATE INDEX pending_contacts_notice ON pending_contacts(notice_id);
