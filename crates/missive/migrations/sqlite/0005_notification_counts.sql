-- Notification counts without a row per member per message. A message's push rules give
-- the same answer for nearly every member: that answer is kept on the event (`notify`:
-- 0 none, 1 notify, 2 notify and highlight) and summed per room (`rooms.notify_seq`,
-- `rooms.highlight_seq`); a member's count is the room's sum minus their offset, which
-- moves only for the events whose answer differs for them (their own, mentions, their own
-- rules: rows of push_exceptions) and for the events their read receipts cover.
ALTER TABLE events ADD COLUMN notify INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN notify_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN highlight_seq INTEGER NOT NULL DEFAULT 0;

-- A local member's answer for an event where it differs from the event's `notify`.
CREATE TABLE push_exceptions (
    user_id     TEXT NOT NULL,
    room_id     TEXT NOT NULL,
    event_pos   INTEGER NOT NULL,
    level       INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, event_pos)
) WITHOUT ROWID;

-- One row per joined local member; `since_pos` is their join: nothing before counts.
CREATE TABLE notification_offsets (
    user_id        TEXT NOT NULL,
    room_id        TEXT NOT NULL,
    notify_off     INTEGER NOT NULL,
    highlight_off  INTEGER NOT NULL,
    since_pos      INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id)
) WITHOUT ROWID;

-- Earlier events notified through rows: each row becomes an exception to a `notify` of 0,
-- and each member starts from their unread count.
INSERT INTO push_exceptions (user_id, room_id, event_pos, level)
    SELECT user_id, room_id, event_pos, 1 + highlight FROM event_push_actions;
INSERT INTO notification_offsets (user_id, room_id, notify_off, highlight_off, since_pos)
    SELECT m.user_id, m.room_id, -COUNT(a.event_pos), -COALESCE(SUM(a.highlight), 0), m.stream_pos
    FROM memberships m LEFT JOIN event_push_actions a ON a.user_id = m.user_id AND a.room_id = m.room_id
    WHERE m.membership = 'join' GROUP BY m.user_id, m.room_id, m.stream_pos;
DROP TABLE event_push_actions;
