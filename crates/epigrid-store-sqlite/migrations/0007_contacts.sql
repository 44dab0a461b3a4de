-- Contacts found by tracing (pending) and confirmed by staff: the edges of transmission chains.
CREATE TABLE contacts (
    index_person_id   TEXT NOT NULL REFERENCES persons(id),
    contact_person_id TEXT NOT NULL REFERENCES persons(id),
    degree            INTEGER NOT NULL,
    kinds             TEXT NOT NULL,
    exposure_s        BIGINT NOT NULL,
    score             REAL NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'dismissed')),
    first_found_at    INTEGER NOT NULL,
    last_found_at     INTEGER NOT NULL,
    PRIMARY KEY (index_person_id, contact_person_id)
);
CREATE INDEX contacts_contact ON contacts(contact_person_id);
