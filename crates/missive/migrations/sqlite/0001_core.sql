-- Core schema: accounts, rooms and their event graph, per-user data.
-- Every row holding personal data carries the timestamps retention needs (ms since epoch).
-- Flags are integers 0/1 on both backends so one query text serves both.

CREATE TABLE server_signing_keys (
    key_id      TEXT PRIMARY KEY,
    pkcs8       TEXT NOT NULL,          -- base64 of the PKCS#8 document
    created_ts  INTEGER NOT NULL,
    expired_ts  INTEGER
);

CREATE TABLE users (
    user_id        TEXT PRIMARY KEY,
    password_hash  TEXT,
    is_admin       INTEGER NOT NULL DEFAULT 0,
    is_guest       INTEGER NOT NULL DEFAULT 0,
    -- Deactivated accounts keep their row so that the ID is never handed out again.
    deactivated    INTEGER NOT NULL DEFAULT 0,
    created_ts     INTEGER NOT NULL,
    updated_ts     INTEGER NOT NULL
);

CREATE TABLE profiles (
    user_id      TEXT PRIMARY KEY,
    displayname  TEXT,
    avatar_url   TEXT,
    updated_ts   INTEGER NOT NULL
);

CREATE TABLE devices (
    user_id              TEXT NOT NULL,
    device_id            TEXT NOT NULL,
    display_name         TEXT,
    created_ts           INTEGER NOT NULL,
    last_seen_ts         INTEGER,
    last_seen_ip         TEXT,
    last_seen_user_agent TEXT,
    PRIMARY KEY (user_id, device_id)
);

-- Tokens are stored as SHA-256 digests: a database dump does not log anyone in.
CREATE TABLE access_tokens (
    token_hash          TEXT PRIMARY KEY,
    refresh_token_hash  TEXT UNIQUE,
    user_id             TEXT NOT NULL,
    device_id           TEXT NOT NULL,
    expires_ts          INTEGER,
    created_ts          INTEGER NOT NULL
);
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);

CREATE TABLE rooms (
    room_id       TEXT PRIMARY KEY,
    room_version  TEXT NOT NULL,
    creator       TEXT NOT NULL,
    published     INTEGER NOT NULL DEFAULT 0,   -- listed in the public room directory
    state_group   INTEGER NOT NULL,             -- state after the room's latest event
    created_ts    INTEGER NOT NULL
);

-- The event graph. `json` is the signed PDU exactly as hashed (canonical JSON).
-- `stream_pos` orders the local timeline; sync tokens are built from it.
CREATE TABLE events (
    stream_pos          INTEGER PRIMARY KEY,
    event_id            TEXT NOT NULL UNIQUE,
    room_id             TEXT NOT NULL,
    sender              TEXT NOT NULL,
    event_type          TEXT NOT NULL,
    state_key           TEXT,
    depth               INTEGER NOT NULL,
    origin_server_ts    INTEGER NOT NULL,
    json                TEXT NOT NULL,
    state_group_before  INTEGER NOT NULL,
    state_group_after   INTEGER NOT NULL,
    rel_type            TEXT,
    relates_to          TEXT,
    thread_root         TEXT,
    redacted_by         TEXT,
    txn_device_id       TEXT,
    txn_id              TEXT,
    received_ts         INTEGER NOT NULL
);
CREATE INDEX events_room_pos ON events (room_id, stream_pos);
CREATE INDEX events_relates ON events (relates_to, rel_type);
CREATE INDEX events_thread ON events (room_id, thread_root, stream_pos);

-- The leaves of a room's DAG: the prev_events of the next event.
CREATE TABLE room_extremities (
    room_id   TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- Room state at any event: a chain of deltas with a full snapshot every so often.
CREATE TABLE state_groups (
    id          INTEGER PRIMARY KEY,
    room_id     TEXT NOT NULL,
    prev_group  INTEGER,
    chain_len   INTEGER NOT NULL,
    delta       TEXT NOT NULL,        -- JSON [[type, state_key, event_id], ...]
    created_ts  INTEGER NOT NULL
);

CREATE TABLE room_current_state (
    room_id     TEXT NOT NULL,
    event_type  TEXT NOT NULL,
    state_key   TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    PRIMARY KEY (room_id, event_type, state_key)
);

-- Current membership of every user known to a room, with the stream position it changed at.
CREATE TABLE memberships (
    room_id     TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    membership  TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    stream_pos  INTEGER NOT NULL,
    forgotten   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id, membership);

CREATE TABLE room_aliases (
    alias       TEXT PRIMARY KEY,
    room_id     TEXT NOT NULL,
    creator     TEXT NOT NULL,
    created_ts  INTEGER NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

CREATE TABLE account_data (
    user_id     TEXT NOT NULL,
    room_id     TEXT NOT NULL,   -- '' for global account data
    data_type   TEXT NOT NULL,
    content     TEXT NOT NULL,
    stream_pos  INTEGER NOT NULL,
    updated_ts  INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, data_type)
);
CREATE INDEX account_data_pos ON account_data (user_id, stream_pos);

CREATE TABLE receipts (
    room_id       TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    receipt_type  TEXT NOT NULL,
    thread_id     TEXT NOT NULL,   -- '' when unthreaded
    event_id      TEXT NOT NULL,
    event_pos     INTEGER NOT NULL,
    ts            INTEGER NOT NULL,
    stream_pos    INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id, receipt_type, thread_id)
);
CREATE INDEX receipts_room_pos ON receipts (room_id, stream_pos);

-- Notifications computed from push rules when an event is stored; read receipts clear them.
CREATE TABLE event_push_actions (
    room_id     TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    event_pos   INTEGER NOT NULL,
    thread_id   TEXT NOT NULL,
    highlight   INTEGER NOT NULL,
    created_ts  INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, event_pos)
);

CREATE TABLE filters (
    user_id     TEXT NOT NULL,
    filter_id   INTEGER NOT NULL,
    json        TEXT NOT NULL,
    created_ts  INTEGER NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);
