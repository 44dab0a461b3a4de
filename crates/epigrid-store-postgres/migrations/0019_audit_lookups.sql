-- An admin asks the audit log who has read or changed one person's data (subject) and what
-- one account has done (username): both newest first.
CREATE INDEX audit_subject ON audit_log(subject, seq);
CREATE INDEX audit_username ON audit_log(username, seq);
