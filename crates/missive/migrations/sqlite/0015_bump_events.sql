-- Sliding sync orders a user's rooms by their latest "bump" event (a message, not a
-- receipt or a profile change): this index finds it per room without reading the rest.
CREATE INDEX events_bump ON events (room_id, stream_pos)
    WHERE event_type IN ('m.room.create', 'm.room.message', 'm.room.encrypted', 'm.sticker', 'm.call.invite',
                         'm.poll.start', 'm.beacon_info');
