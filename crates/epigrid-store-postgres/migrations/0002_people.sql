-- People under management: category history, medical observation, daily reports, lab results.

CREATE INDEX persons_category ON persons(category, area_path) WHERE category <> 'none';
CREATE INDEX persons_name ON persons(name);
CREATE INDEX registrations_plate ON registrations(plate) WHERE plate IS NOT NULL;

CREATE TABLE category_changes (
    id          UUID PRIMARY KEY,
    person_id   UUID NOT NULL REFERENCES persons(id),
    from_cat    TEXT NOT NULL,
    to_cat      TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    by_user     UUID,
    by_username TEXT NOT NULL,
    reason      TEXT NOT NULL
);
CREATE INDEX category_changes_person ON category_changes(person_id, at);

CREATE TABLE observations (
    id              UUID PRIMARY KEY,
    person_id       UUID NOT NULL REFERENCES persons(id),
    kind            TEXT NOT NULL CHECK (kind IN ('home', 'central')),
    site_id         UUID REFERENCES sites(id),
    start_date      DATE NOT NULL,
    planned_end     DATE NOT NULL,
    released_at     TIMESTAMPTZ,
    release_reason  TEXT,
    grid_worker_id  UUID REFERENCES users(id),
    token_hash      BYTEA NOT NULL UNIQUE,
    token_revoked   BOOLEAN NOT NULL DEFAULT FALSE,
    reports_per_day SMALLINT NOT NULL CHECK (reports_per_day IN (1, 2)),
    area_path       TEXT COLLATE "C" NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    created_by      UUID,
    CHECK (planned_end >= start_date)
);
CREATE INDEX observations_person ON observations(person_id);
CREATE INDEX observations_open ON observations(planned_end) WHERE released_at IS NULL;

CREATE TABLE health_reports (
    id             UUID PRIMARY KEY,
    observation_id UUID NOT NULL REFERENCES observations(id),
    person_id      UUID NOT NULL REFERENCES persons(id),
    day            DATE NOT NULL,
    slot           SMALLINT NOT NULL,
    at             TIMESTAMPTZ NOT NULL,
    temperature    SMALLINT,
    symptoms       SMALLINT NOT NULL DEFAULT 0,
    note           TEXT,
    by_user        UUID,
    UNIQUE (observation_id, day, slot)
);
CREATE INDEX health_reports_obs_at ON health_reports(observation_id, at);

CREATE TABLE lab_results (
    id          UUID PRIMARY KEY,
    person_id   UUID NOT NULL REFERENCES persons(id),
    test        TEXT NOT NULL,
    sample_date DATE NOT NULL,
    result_date DATE,
    result      TEXT NOT NULL,
    entered_by  UUID,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX lab_results_person ON lab_results(person_id, sample_date);
CREATE INDEX lab_results_positive ON lab_results(person_id) WHERE result = 'positive';
