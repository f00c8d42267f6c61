-- Events the retention purge emptied but had to keep for the room's graph (a leaf the
-- next event builds on, a replaced state event an auth chain names): pruned as a
-- redaction would, out of the timeline, and never served to clients again.
ALTER TABLE events ADD COLUMN purged INTEGER NOT NULL DEFAULT 0;
