-- The check value of the master key (`Vault::key_check`): a server started with another key
-- refuses to run instead of sealing new data with it.
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
