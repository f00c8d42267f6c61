-- Messages whose sender asked for them to disappear (MSC2228 `org.matrix.self_destruct_after`):
-- at `expires_ts` the event's content is deleted, as a redaction would, and the row goes.
CREATE TABLE event_expiry (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX event_expiry_due ON event_expiry (expires_ts);
