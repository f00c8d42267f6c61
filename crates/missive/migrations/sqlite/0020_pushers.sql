-- Push gateways set by clients (`POST /pushers/set`): one row per user, app and pushkey,
-- tied to the device (access token's device) that set it, which takes it away with it.
-- Notifications themselves are never stored: they wait in memory until delivered.
CREATE TABLE pushers (
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    device_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    app_display_name TEXT NOT NULL,
    device_display_name TEXT NOT NULL,
    profile_tag TEXT,
    lang TEXT NOT NULL,
    data TEXT NOT NULL,
    pushkey_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, app_id, pushkey)
);
CREATE INDEX pushers_app_pushkey ON pushers (app_id, pushkey);
