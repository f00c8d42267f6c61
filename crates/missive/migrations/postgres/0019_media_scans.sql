-- The antivirus's verdicts, per content hash (a file stored once is scanned once): `clean`
-- or `infected` (with the signature found). A media item whose content has no verdict
-- here is not served while scanning is on. Released false positives are `clean` with the
-- releasing operator in `detail`.
CREATE TABLE media_scans (
    sha256 TEXT PRIMARY KEY,
    verdict TEXT NOT NULL,
    detail TEXT,
    scanned_ts BIGINT NOT NULL
);
