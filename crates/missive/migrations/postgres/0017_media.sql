-- The media repository: per media ID (origin server and ID of its mxc URI), what the file
-- is; the bytes are in a file under the data directory named by their SHA-256, so that
-- identical files are stored once.
CREATE TABLE media (
    origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    content_type TEXT,
    filename TEXT,
    uploader TEXT,
    created_ts BIGINT NOT NULL,
    quarantined INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (origin, media_id)
);
CREATE INDEX media_uploader ON media (uploader, created_ts);
CREATE INDEX media_sha256 ON media (sha256);

-- Thumbnails made on demand, kept: per media item and size asked, the thumbnail's file
-- (content-addressed like the media).
CREATE TABLE media_thumbnails (
    origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    method TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (origin, media_id, width, height, method)
);
