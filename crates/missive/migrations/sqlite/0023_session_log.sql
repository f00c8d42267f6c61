-- Connection logs of sessions: each login and each session end, with the address and
-- user agent it came from; purged past `[retention] connection_logs_days`.
CREATE TABLE session_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    event TEXT NOT NULL,
    ip TEXT,
    user_agent TEXT,
    ts BIGINT NOT NULL
);
CREATE INDEX session_log_user ON session_log (user_id, id);
CREATE INDEX session_log_ts ON session_log (ts);
