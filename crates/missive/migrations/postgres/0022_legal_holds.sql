-- Legal holds: data of a user or a room the retention purge must keep until the hold is
-- lifted (a judicial request). Lifting a hold keeps its row, with who lifted it and when.
CREATE TABLE legal_holds (
    id BIGSERIAL PRIMARY KEY,
    user_id TEXT,
    room_id TEXT,
    reason TEXT NOT NULL,
    reference TEXT NOT NULL,
    placed_by TEXT NOT NULL,
    placed_ts BIGINT NOT NULL,
    lifted_by TEXT,
    lifted_ts BIGINT
);
CREATE INDEX legal_holds_user ON legal_holds (user_id);
CREATE INDEX legal_holds_room ON legal_holds (room_id);
