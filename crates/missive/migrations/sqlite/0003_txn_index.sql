-- Transaction-ID lookups run on every client send; without this index each was a scan of
-- the whole events table.
CREATE INDEX events_txn ON events (sender, txn_device_id, txn_id) WHERE txn_id IS NOT NULL;

-- Incremental sync asks which rooms have new receipts since a position.
CREATE INDEX receipts_pos ON receipts (stream_pos);
