-- epigrid on SQLite: the foundation schema.
-- Times are INTEGER microseconds since the Unix epoch (UTC); local days are TEXT 'YYYY-MM-DD'.
-- Paths are materialised area paths ('/150800/150802/'), filtered by range for scope.

CREATE TABLE areas (
    code        TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    level       INTEGER NOT NULL CHECK (level BETWEEN 1 AND 6),
    parent_code TEXT REFERENCES areas(code),
    path        TEXT NOT NULL UNIQUE
);
CREATE INDEX areas_parent ON areas(parent_code, code);

CREATE TABLE sites (
    id               TEXT PRIMARY KEY,
    token            TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL CHECK (kind IN ('checkpoint', 'gate', 'arrival', 'venue')),
    name             TEXT NOT NULL,
    area_code        TEXT NOT NULL REFERENCES areas(code),
    area_path        TEXT NOT NULL,
    active           INTEGER NOT NULL DEFAULT 1,
    default_stay_min INTEGER NOT NULL,
    created_at       INTEGER NOT NULL
);
CREATE INDEX sites_path ON sites(area_path);

CREATE TABLE persons (
    id             TEXT PRIMARY KEY,
    doc_type       TEXT,
    doc_index      BLOB,
    doc_cipher     BLOB,
    doc_masked     TEXT,
    name           TEXT NOT NULL,
    phone_index    BLOB,
    phone_cipher   BLOB,
    phone_masked   TEXT,
    birth_date     TEXT,
    sex            TEXT,
    home_area_code TEXT REFERENCES areas(code),
    area_path      TEXT NOT NULL,
    provisional    INTEGER NOT NULL,
    merged_into    TEXT REFERENCES persons(id),
    category       TEXT NOT NULL DEFAULT 'none',
    category_since INTEGER,
    created_at     INTEGER NOT NULL,
    last_seen_at   INTEGER NOT NULL
);
CREATE UNIQUE INDEX persons_doc ON persons(doc_type, doc_index) WHERE doc_index IS NOT NULL;
CREATE INDEX persons_phone ON persons(phone_index) WHERE phone_index IS NOT NULL;
CREATE INDEX persons_path ON persons(area_path);

-- seq is the rowid: new rows get max(seq)+1, so the live feed can read "what is after seq N".
CREATE TABLE registrations (
    seq               INTEGER PRIMARY KEY,
    id                TEXT NOT NULL UNIQUE,
    site_id           TEXT NOT NULL REFERENCES sites(id),
    person_id         TEXT NOT NULL REFERENCES persons(id),
    area_path         TEXT NOT NULL,
    at                INTEGER NOT NULL,
    day               TEXT NOT NULL,
    kind              TEXT NOT NULL,
    channel           TEXT NOT NULL,
    by_user           TEXT,
    verification_code TEXT NOT NULL,
    temperature       INTEGER,
    symptoms          INTEGER NOT NULL DEFAULT 0,
    high_risk_travel  INTEGER,
    plate             TEXT,
    companions        INTEGER NOT NULL DEFAULT 0,
    origin_code       TEXT,
    destination       TEXT,
    direction         TEXT,
    visitor           INTEGER,
    unit_code         TEXT,
    visit_reason      TEXT,
    arrival_date      TEXT,
    residence_code    TEXT,
    address           TEXT,
    employer          TEXT,
    stay_days         INTEGER,
    purpose           TEXT,
    left_at           INTEGER
);
CREATE INDEX registrations_site_at ON registrations(site_id, at);
CREATE INDEX registrations_person_at ON registrations(person_id, at);
CREATE INDEX registrations_path_seq ON registrations(area_path, seq);

CREATE TABLE registration_companions (
    registration_id TEXT NOT NULL REFERENCES registrations(id),
    position        INTEGER NOT NULL,
    name            TEXT,
    person_id       TEXT REFERENCES persons(id),
    PRIMARY KEY (registration_id, position)
);
CREATE INDEX registration_companions_person ON registration_companions(person_id);

CREATE TABLE rollups (
    area_code TEXT NOT NULL,
    area_path TEXT NOT NULL,
    day       TEXT NOT NULL,
    metric    TEXT NOT NULL,
    value     INTEGER NOT NULL,
    PRIMARY KEY (area_code, day, metric)
);
CREATE INDEX rollups_path ON rollups(metric, area_path, day);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL,
    area_code     TEXT NOT NULL REFERENCES areas(code),
    area_path     TEXT NOT NULL,
    active        INTEGER NOT NULL DEFAULT 1,
    created_at    INTEGER NOT NULL
);

CREATE TABLE sessions (
    token_hash BLOB PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id),
    csrf       TEXT NOT NULL,
    api        INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX sessions_expiry ON sessions(expires_at);

CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    id        TEXT NOT NULL UNIQUE,
    at        INTEGER NOT NULL,
    user_id   TEXT,
    username  TEXT NOT NULL,
    action    TEXT NOT NULL,
    subject   TEXT NOT NULL,
    area_path TEXT NOT NULL,
    ip        TEXT NOT NULL,
    detail    TEXT NOT NULL
);
CREATE INDEX audit_path ON audit_log(area_path, seq);
-- The audit log is append-only: the database itself refuses edits and deletions.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
