-- What the client-server API needs beyond the core: the state event a state event replaced
-- (served as `unsigned.replaces_state` and `prev_content`), OpenID tokens for widgets and
-- other servers, and the content reports users file for operators.

ALTER TABLE events ADD COLUMN replaces_state TEXT;

-- Stored as SHA-256 digests, like access tokens.
CREATE TABLE openid_tokens (
    token_hash  TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    expires_ts  BIGINT NOT NULL,
    created_ts  BIGINT NOT NULL
);
CREATE INDEX openid_tokens_user ON openid_tokens (user_id);

-- Reports of events, rooms and users, kept for the operator (admin API).
CREATE TABLE reports (
    id              BIGSERIAL PRIMARY KEY,
    reporter        TEXT NOT NULL,
    room_id         TEXT,
    event_id        TEXT,
    target_user_id  TEXT,
    reason          TEXT,
    score           BIGINT,
    created_ts      BIGINT NOT NULL
);
CREATE INDEX reports_reporter ON reports (reporter);

-- Sync shows events of the current state whatever the history visibility: which of a
-- timeline's hidden state events are current is looked up by event ID.
CREATE INDEX room_current_state_event ON room_current_state (event_id);

-- Users who asked, when deactivating, for their messages to be erased: users who were not
-- in the room when a message was sent see it redacted.
ALTER TABLE users ADD COLUMN erased INTEGER NOT NULL DEFAULT 0;

-- A user-signing key is the user's own business: its change reaches the user's devices,
-- not the people they share rooms with.
ALTER TABLE device_list_changes ADD COLUMN self_only INTEGER NOT NULL DEFAULT 0;
