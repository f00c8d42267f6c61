-- Device lists of other servers' users, kept only while a local user shares a room with
-- them (the room write that ends the last shared membership deletes the row): `keys/query`
-- answers from here, and `m.device_list_update` EDUs that follow `stream_id` apply to it.
CREATE TABLE remote_device_lists (
    user_id TEXT PRIMARY KEY,
    stream_id BIGINT NOT NULL,
    -- JSON object: device ID to `{"keys": …, "device_display_name": …}`.
    devices TEXT NOT NULL,
    master_key TEXT,
    self_signing_key TEXT,
    -- An update could not be applied and the resync failed: asked again at the next query.
    stale INTEGER NOT NULL DEFAULT 0,
    updated_ts BIGINT NOT NULL
);
