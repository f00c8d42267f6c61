-- Federation: the verify keys of other servers, as their key document served them (kept
-- whole, so that this server can act as a notary and pass it on with its own signature).

CREATE TABLE remote_server_keys (
    server_name     TEXT NOT NULL,
    key_id          TEXT NOT NULL,
    public_key      TEXT NOT NULL,          -- unpadded base64 ed25519 key
    valid_until_ts  INTEGER NOT NULL,        -- the document's validity (old keys: when they expired)
    expired_ts      INTEGER,                 -- set for old_verify_keys
    document        TEXT NOT NULL,          -- the signed key document this key came in
    fetched_ts      INTEGER NOT NULL,
    PRIMARY KEY (server_name, key_id)
);

-- PDUs waiting for another server, written by the room write that stored them and deleted
-- once the destination acknowledged the transaction that carried them: nothing queued is
-- lost when either side restarts.
CREATE TABLE federation_outbox (
    destination  TEXT NOT NULL,
    stream_pos   INTEGER NOT NULL,
    PRIMARY KEY (destination, stream_pos)
);

-- What another server said of its room when it invited one of this server's users to a
-- room this server is not in (stripped state events, as a JSON array); deleted on join.
CREATE TABLE invite_states (
    room_id  TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    state    TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
