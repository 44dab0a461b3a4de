-- A person whose details staff corrected is pinned (`pinned_person_sql`): a later registration
-- elsewhere must not undo the correction. Corrections made before this are read back from the
-- audit log.
ALTER TABLE persons ADD COLUMN corrected INTEGER NOT NULL DEFAULT 0;
UPDATE persons SET corrected = 1
 WHERE 'person:' || id IN (SELECT subject FROM audit_log WHERE action = 'person.correct');
