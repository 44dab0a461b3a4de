-- The rows of a list that could not be used, kept so whoever looks at the list later sees why
-- (a message key and its placeholder values: never the cell's content).
CREATE TABLE list_errors (
    list_id TEXT NOT NULL REFERENCES lists(id),
    n       INTEGER NOT NULL,
    line    INTEGER NOT NULL,
    field   TEXT NOT NULL,
    key     TEXT NOT NULL,
    args    TEXT NOT NULL,
    PRIMARY KEY (list_id, n)
);
