-- A person whose details staff corrected is pinned (`pinned_person_sql`): a later registration
-- elsewhere must not undo the correction. Corrections made before this are read back from the
-- audit log.
ALTER TABLE persons ADD COLUMN corrected BOOLEAN NOT NULL DEFAULT false;
UPDATE persons SET corrected = true
 WHERE 'person:' || id::text IN (SELECT subject FROM audit_log WHERE action = 'person.correct');
