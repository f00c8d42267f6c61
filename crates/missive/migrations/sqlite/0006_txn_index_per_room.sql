-- Transaction IDs are scoped to their endpoint, which names the room: the lookups of a send
-- and the loading of a device's IDs (rooms/txns.rs) filter on the room, and without it in
-- the index the planner preferred events_room_pos and scanned the room's whole timeline.
DROP INDEX events_txn;
CREATE INDEX events_txn ON events (room_id, sender, txn_device_id, txn_id) WHERE txn_id IS NOT NULL;
