-- Events kept outside the room's timeline: the state and auth chain received with a remote
-- join, auth events fetched for history, and soft-failed events. Like them, history
-- backfilled from other servers sits below stream position zero, but in the timeline.
ALTER TABLE events ADD COLUMN outlier INTEGER NOT NULL DEFAULT 0;
UPDATE events SET outlier = 1 WHERE stream_pos < 0;
