-- Rooms joined through a resident server that left the members out of its answer
-- (a partial-state join): the join, and the servers the resident named as in the room,
-- kept until the full state before the join has been fetched.
CREATE TABLE partial_state_rooms (
    room_id TEXT PRIMARY KEY,
    join_event_id TEXT NOT NULL,
    servers TEXT NOT NULL
);
