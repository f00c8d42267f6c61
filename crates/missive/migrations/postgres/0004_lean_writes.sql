-- Every message writes each of these; most messages relate to nothing and start no thread,
-- so the relation and thread indexes only cover the events that have them.
DROP INDEX events_relates;
CREATE INDEX events_relates ON events (relates_to, rel_type) WHERE relates_to IS NOT NULL;
DROP INDEX events_thread;
CREATE INDEX events_thread ON events (room_id, thread_root, stream_pos) WHERE thread_root IS NOT NULL;
