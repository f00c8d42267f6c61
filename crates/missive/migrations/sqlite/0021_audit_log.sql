-- The audit trail of operator actions: every request to the admin API (and the IAM's SCIM
-- provisioning), who made it, on what, from where, with what outcome. The server's code
-- only ever appends to it; what goes is only what its retention lets go.
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    ip TEXT,
    status INTEGER NOT NULL
);
CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_target ON audit_log (target, id);
