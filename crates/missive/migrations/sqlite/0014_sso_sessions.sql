-- The identity provider's session a login token came from, carried to the device the
-- token signs in, so that the provider's back-channel logout of one session ends only
-- the devices it signed in.
ALTER TABLE login_tokens ADD COLUMN auth_provider TEXT;
ALTER TABLE login_tokens ADD COLUMN session_id TEXT;

CREATE TABLE sso_sessions (
    auth_provider TEXT NOT NULL,
    session_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (auth_provider, session_id, user_id, device_id)
);
CREATE INDEX sso_sessions_device ON sso_sessions (user_id, device_id);
