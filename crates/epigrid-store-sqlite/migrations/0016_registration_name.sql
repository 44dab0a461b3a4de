-- A registration shows what was typed into it, not what its person's record holds: whoever
-- types someone's ID number at a site in their own area must not read back that person's name
-- or phone from another area. Each registration keeps the name it was made with; the phone is
-- the one given with it (migration 13) or none. Registrations older than this take the name
-- their person has now (what they showed until now); those older than migration 13 show no
-- phone any more (the person's number is on the person's page, for whoever may see them).
ALTER TABLE registrations ADD COLUMN name TEXT;
UPDATE registrations SET name = (SELECT p.name FROM persons p WHERE p.id = registrations.person_id);
