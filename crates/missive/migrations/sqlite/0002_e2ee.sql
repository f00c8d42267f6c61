-- End-to-end encryption: the server stores and relays keys and ciphertext, never plaintext.

CREATE TABLE device_keys (
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    json        TEXT NOT NULL,        -- signed device keys, with any signatures uploaded later
    updated_ts  INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE one_time_keys (
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    algorithm   TEXT NOT NULL,
    key_id      TEXT NOT NULL,        -- "<algorithm>:<id>"
    json        TEXT NOT NULL,
    created_ts  INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, key_id)
);
CREATE INDEX one_time_keys_claim ON one_time_keys (user_id, device_id, algorithm);

CREATE TABLE fallback_keys (
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    algorithm   TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    json        TEXT NOT NULL,
    used        INTEGER NOT NULL DEFAULT 0,
    created_ts  INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm)
);

CREATE TABLE cross_signing_keys (
    user_id     TEXT NOT NULL,
    key_type    TEXT NOT NULL,        -- master, self_signing, user_signing
    json        TEXT NOT NULL,
    updated_ts  INTEGER NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Whose device list changed, and when (stream position): drives device_lists in /sync.
CREATE TABLE device_list_changes (
    stream_pos  INTEGER NOT NULL,
    user_id     TEXT NOT NULL,
    created_ts  INTEGER NOT NULL,
    PRIMARY KEY (stream_pos, user_id)
);
CREATE INDEX device_list_changes_user ON device_list_changes (user_id, stream_pos);

-- Queued to-device messages. `delivered_in` is the sync token position of the response that
-- carried the message; it is deleted once the client syncs from that position or later.
CREATE TABLE to_device (
    stream_pos    INTEGER PRIMARY KEY,
    user_id       TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    sender        TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    content       TEXT NOT NULL,
    delivered_in  INTEGER,
    created_ts    INTEGER NOT NULL
);
CREATE INDEX to_device_target ON to_device (user_id, device_id, stream_pos);

CREATE TABLE to_device_txns (
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    txn_id      TEXT NOT NULL,
    created_ts  INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

CREATE TABLE backup_versions (
    user_id     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    algorithm   TEXT NOT NULL,
    auth_data   TEXT NOT NULL,
    etag        INTEGER NOT NULL,
    deleted     INTEGER NOT NULL DEFAULT 0,
    created_ts  INTEGER NOT NULL,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE backup_keys (
    user_id     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    room_id     TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    json        TEXT NOT NULL,
    updated_ts  INTEGER NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);

CREATE TABLE dehydrated_devices (
    user_id      TEXT PRIMARY KEY,
    device_id    TEXT NOT NULL,
    device_data  TEXT NOT NULL,
    created_ts   INTEGER NOT NULL
);
