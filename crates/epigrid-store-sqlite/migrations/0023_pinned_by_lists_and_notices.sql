-- A person named on a list or who came forward on a notice is pinned (pinned_person_sql):
-- these look them up by person.
CREATE INDEX list_matches_person ON list_matches(person_id);
CREATE INDEX pending_contacts_person ON pending_contacts(person_id);
