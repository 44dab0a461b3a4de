-- Area paths are compared as bytes in scope filters (`area_path >= lo AND area_path < hi`, which
-- needs '/' < '0'): every other area_path column was created COLLATE "C" for that, whatever the
-- database's default collation; these two were not, so under a linguistic default (en_US.UTF-8
-- ignores '/') a list or notice below the caller's own area fell outside their scope.
ALTER TABLE lists ALTER COLUMN area_path TYPE TEXT COLLATE "C";
ALTER TABLE notices ALTER COLUMN area_path TYPE TEXT COLLATE "C";
