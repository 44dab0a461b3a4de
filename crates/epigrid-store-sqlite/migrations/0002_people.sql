-- People under management: category history, medical observation, daily reports, lab results.

CREATE INDEX persons_category ON persons(category, area_path) WHERE category <> 'none';
CREATE INDEX persons_name ON persons(name);
CREATE INDEX registrations_plate ON registrations(plate) WHERE plate IS NOT NULL;

CREATE TABLE category_changes (
    id          TEXT PRIMARY KEY,
    person_id   TEXT NOT NULL REFERENCES persons(id),
    from_cat    TEXT NOT NULL,
    to_cat      TEXT NOT NULL,
    at          INTEGER NOT NULL,
    by_user     TEXT,
    by_username TEXT NOT NULL,
    reason      TEXT NOT NULL
);
CREATE INDEX category_changes_person ON category_changes(person_id, at);

CREATE TABLE observations (
    id              TEXT PRIMARY KEY,
    person_id       TEXT NOT NULL REFERENCES persons(id),
    kind            TEXT NOT NULL CHECK (kind IN ('home', 'central')),
    site_id         TEXT REFERENCES sites(id),
    start_date      TEXT NOT NULL,
    planned_end     TEXT NOT NULL,
    released_at     INTEGER,
    release_reason  TEXT,
    grid_worker_id  TEXT REFERENCES users(id),
    token_hash      BLOB NOT NULL UNIQUE,
    token_revoked   INTEGER NOT NULL DEFAULT 0,
    reports_per_day INTEGER NOT NULL CHECK (reports_per_day IN (1, 2)),
    area_path       TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    created_by      TEXT,
    CHECK (planned_end >= start_date)
);
CREATE INDEX observations_person ON observations(person_id);
CREATE INDEX observations_open ON observations(planned_end) WHERE released_at IS NULL;

CREATE TABLE health_reports (
    id             TEXT PRIMARY KEY,
    observation_id TEXT NOT NULL REFERENCES observations(id),
    person_id      TEXT NOT NULL REFERENCES persons(id),
    day            TEXT NOT NULL,
    slot           INTEGER NOT NULL,
    at             INTEGER NOT NULL,
    temperature    INTEGER,
    symptoms       INTEGER NOT NULL DEFAULT 0,
    note           TEXT,
    by_user        TEXT,
    UNIQUE (observation_id, day, slot)
);
CREATE INDEX health_reports_obs_at ON health_reports(observation_id, at);

CREATE TABLE lab_results (
    id          TEXT PRIMARY KEY,
    person_id   TEXT NOT NULL REFERENCES persons(id),
    test        TEXT NOT NULL,
    sample_date TEXT NOT NULL,
    result_date TEXT,
    result      TEXT NOT NULL,
    entered_by  TEXT,
    created_at  INTEGER NOT NULL
);
CREATE INDEX lab_results_person ON lab_results(person_id, sample_date);
CREATE INDEX lab_results_positive ON lab_results(person_id) WHERE result = 'positive';
