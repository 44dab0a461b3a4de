-- epigrid on PostgreSQL: the foundation schema.
-- Paths use COLLATE "C" so that scope range filters (path >= lo AND path < hi) compare bytes
-- and use the indexes whatever the database's default collation.

CREATE TABLE areas (
    code        TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT NOT NULL,
    level       SMALLINT NOT NULL CHECK (level BETWEEN 1 AND 6),
    parent_code TEXT COLLATE "C" REFERENCES areas(code),
    path        TEXT COLLATE "C" NOT NULL UNIQUE
);
CREATE INDEX areas_parent ON areas(parent_code, code);

CREATE TABLE sites (
    id               UUID PRIMARY KEY,
    token            TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL CHECK (kind IN ('checkpoint', 'gate', 'arrival', 'venue')),
    name             TEXT NOT NULL,
    area_code        TEXT COLLATE "C" NOT NULL REFERENCES areas(code),
    area_path        TEXT COLLATE "C" NOT NULL,
    active           BOOLEAN NOT NULL DEFAULT TRUE,
    default_stay_min INTEGER NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX sites_path ON sites(area_path);

CREATE TABLE persons (
    id             UUID PRIMARY KEY,
    doc_type       TEXT,
    doc_index      BYTEA,
    doc_cipher     BYTEA,
    doc_masked     TEXT,
    name           TEXT NOT NULL,
    phone_index    BYTEA,
    phone_cipher   BYTEA,
    phone_masked   TEXT,
    birth_date     DATE,
    sex            TEXT,
    home_area_code TEXT COLLATE "C" REFERENCES areas(code),
    area_path      TEXT COLLATE "C" NOT NULL,
    provisional    BOOLEAN NOT NULL,
    merged_into    UUID REFERENCES persons(id),
    category       TEXT NOT NULL DEFAULT 'none',
    category_since TIMESTAMPTZ,
    created_at     TIMESTAMPTZ NOT NULL,
    last_seen_at   TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX persons_doc ON persons(doc_type, doc_index) WHERE doc_index IS NOT NULL;
CREATE INDEX persons_phone ON persons(phone_index) WHERE phone_index IS NOT NULL;
CREATE INDEX persons_path ON persons(area_path);

CREATE TABLE registrations (
    seq               BIGSERIAL PRIMARY KEY,
    id                UUID NOT NULL UNIQUE,
    site_id           UUID NOT NULL REFERENCES sites(id),
    person_id         UUID NOT NULL REFERENCES persons(id),
    area_path         TEXT COLLATE "C" NOT NULL,
    at                TIMESTAMPTZ NOT NULL,
    day               DATE NOT NULL,
    kind              TEXT NOT NULL,
    channel           TEXT NOT NULL,
    by_user           UUID,
    verification_code TEXT NOT NULL,
    temperature       SMALLINT,
    symptoms          SMALLINT NOT NULL DEFAULT 0,
    high_risk_travel  BOOLEAN,
    plate             TEXT,
    companions        INTEGER NOT NULL DEFAULT 0,
    origin_code       TEXT,
    destination       TEXT,
    direction         TEXT,
    visitor           BOOLEAN,
    unit_code         TEXT,
    visit_reason      TEXT,
    arrival_date      DATE,
    residence_code    TEXT,
    address           TEXT,
    employer          TEXT,
    stay_days         INTEGER,
    purpose           TEXT,
    left_at           TIMESTAMPTZ
);
CREATE INDEX registrations_site_at ON registrations(site_id, at);
CREATE INDEX registrations_person_at ON registrations(person_id, at);
CREATE INDEX registrations_path_seq ON registrations(area_path, seq);

CREATE TABLE registration_companions (
    registration_id UUID NOT NULL REFERENCES registrations(id),
    position        INTEGER NOT NULL,
    name            TEXT,
    person_id       UUID REFERENCES persons(id),
    PRIMARY KEY (registration_id, position)
);
CREATE INDEX registration_companions_person ON registration_companions(person_id);

CREATE TABLE rollups (
    area_code TEXT COLLATE "C" NOT NULL,
    area_path TEXT COLLATE "C" NOT NULL,
    day       DATE NOT NULL,
    metric    TEXT NOT NULL,
    value     BIGINT NOT NULL,
    PRIMARY KEY (area_code, day, metric)
);
CREATE INDEX rollups_path ON rollups(metric, area_path, day);

CREATE TABLE users (
    id            UUID PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL,
    area_code     TEXT COLLATE "C" NOT NULL REFERENCES areas(code),
    area_path     TEXT COLLATE "C" NOT NULL,
    active        BOOLEAN NOT NULL DEFAULT TRUE,
    created_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE sessions (
    token_hash BYTEA PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users(id),
    csrf       TEXT NOT NULL,
    api        BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_expiry ON sessions(expires_at);

CREATE TABLE audit_log (
    seq       BIGSERIAL PRIMARY KEY,
    id        UUID NOT NULL UNIQUE,
    at        TIMESTAMPTZ NOT NULL,
    user_id   UUID,
    username  TEXT NOT NULL,
    action    TEXT NOT NULL,
    subject   TEXT NOT NULL,
    area_path TEXT COLLATE "C" NOT NULL,
    ip        TEXT NOT NULL,
    detail    TEXT NOT NULL
);
CREATE INDEX audit_path ON audit_log(area_path, seq);
-- The audit log is append-only: the database itself refuses edits and deletions.
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN RAISE EXCEPTION 'audit log is append-only'; END $$;
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
