-- What sliding sync sorts and filters a user's rooms by, kept on the room at write time
-- (as Synapse keeps `sliding_sync_joined_rooms`) so that a list of a thousand rooms is one
-- read of small rows: the stream position of the latest "bump" event (a message, not a
-- receipt or a profile change), whether the room is encrypted, and its type from the
-- create event (a space).
ALTER TABLE rooms ADD COLUMN bump_pos INTEGER;
ALTER TABLE rooms ADD COLUMN encrypted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN room_type TEXT;

UPDATE rooms SET
    bump_pos = (SELECT MAX(e.stream_pos) FROM events e WHERE e.room_id = rooms.room_id AND e.stream_pos > 0
                AND e.event_type IN ('m.room.create', 'm.room.message', 'm.room.encrypted', 'm.sticker',
                                     'm.call.invite', 'm.poll.start', 'm.beacon_info')),
    encrypted = EXISTS (SELECT 1 FROM room_current_state s WHERE s.room_id = rooms.room_id
                        AND s.event_type = 'm.room.encryption' AND s.state_key = ''),
    room_type = (SELECT json_extract(e.json, '$.content.type') FROM room_current_state s
                 JOIN events e ON e.event_id = s.event_id
                 WHERE s.room_id = rooms.room_id AND s.event_type = 'm.room.create' AND s.state_key = '');

-- The facts replace the index that found the latest bump event per room.
DROP INDEX events_bump;
