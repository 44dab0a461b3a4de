-- Someone who comes forward twice on a notice for the same place is recorded once (two taps
-- at once stored two): the earliest of each such pair is kept.
DELETE FROM pending_contacts WHERE rowid NOT IN (
    SELECT MIN(rowid) FROM pending_contacts GROUP BY notice_id, person_id, position
);
CREATE UNIQUE INDEX pending_contacts_once ON pending_contacts(notice_id, person_id, position);
