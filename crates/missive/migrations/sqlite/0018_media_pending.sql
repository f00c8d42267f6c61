-- Media IDs handed out by `POST /_matrix/media/v1/create` whose content is not uploaded
-- yet: who may upload it, and until when (the row goes when the content comes).
CREATE TABLE media_pending (
    media_id TEXT PRIMARY KEY,
    uploader TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX media_pending_uploader ON media_pending (uploader, expires_ts);
