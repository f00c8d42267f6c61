-- Clients registered with the OAuth 2.0 API (RFC 7591): their metadata as registered.
CREATE TABLE oauth_clients (
    client_id TEXT PRIMARY KEY,
    metadata TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
