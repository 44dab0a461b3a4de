-- Someone who comes forward twice on a notice for the same place is recorded once (two taps
-- at once stored two): the earliest of each such pair is kept.
DELETE FROM pending_contacts a USING pending_contacts b
WHERE a.notice_id = b.notice_id AND a.person_id = b.person_id AND a.position = b.position
  AND (a.reported_at, a.id) > (b.reported_at, b.id);
CREATE UNIQUE INDEX pending_contacts_once ON pending_contacts(notice_id, person_id, position);
