-- Every message writes each of these; most messages relate to nothing and start no thread,
-- so the relation and thread indexes only cover the events that have them.
DROP INDEX events_relates;
CREATE INDEX events_relates ON events (relates_to, rel_type) WHERE relates_to IS NOT NULL;
DROP INDEX events_thread;
CREATE INDEX events_thread ON events (room_id, thread_root, stream_pos) WHERE thread_root IS NOT NULL;

-- A notification row per member per message: keyed storage writes one b-tree, not a table
-- and its primary-key index.
CREATE TABLE event_push_actions_new (
    room_id     TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    event_pos   INTEGER NOT NULL,
    thread_id   TEXT NOT NULL,
    highlight   INTEGER NOT NULL,
    created_ts  INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, event_pos)
) WITHOUT ROWID;
INSERT INTO event_push_actions_new SELECT room_id, user_id, event_pos, thread_id, highlight, created_ts
    FROM event_push_actions;
DROP TABLE event_push_actions;
ALTER TABLE event_push_actions_new RENAME TO event_push_actions;
