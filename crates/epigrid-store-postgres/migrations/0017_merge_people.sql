-- Both people of a merge, even an undone one, are pinned (`pinned_person_sql`): a merge is a
-- decision staff made about them. These find a person's merges.
CREATE INDEX person_merges_from ON person_merges(from_person);
CREATE INDEX person_merges_into ON person_merges(into_person);
