-- Identities at the administration's IAM: a provider's subject to the Matrix account it
-- signs in to. A row outlives its account: the ID it names is never given to anyone else,
-- and an agent who signs in again finds their account (unless it was deleted).
CREATE TABLE user_external_ids (
    auth_provider TEXT NOT NULL,
    external_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (auth_provider, external_id)
);
CREATE INDEX user_external_ids_user ON user_external_ids (user_id);

-- Third-party identifiers of accounts: the professional e-mail the IAM vouches for.
CREATE TABLE user_threepids (
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    user_id TEXT NOT NULL,
    validated_ts BIGINT NOT NULL,
    added_ts BIGINT NOT NULL,
    PRIMARY KEY (medium, address)
);
CREATE INDEX user_threepids_user ON user_threepids (user_id);

-- Single-use `m.login.token`s handed to a client after single sign-on, by hash; a token
-- is deleted when used or refused.
CREATE TABLE login_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);

-- Secrets the server generates once and keeps (the pseudonym key when the config sets none).
CREATE TABLE server_secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);

-- What the IAM says of an account: the organisation its e-mail domain names, and whether
-- it is an external user (a partner outside the administration, restricted).
ALTER TABLE users ADD COLUMN organisation TEXT;
ALTER TABLE users ADD COLUMN external INTEGER NOT NULL DEFAULT 0;

-- Lifecycle: a locked (suspended) account keeps everything but may do nothing; a
-- deactivated one records when, for its deletion after the grace period.
ALTER TABLE users ADD COLUMN locked INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN deactivated_ts BIGINT;
-- Deleted after the grace period: the row stays, empty, so that the ID is never reissued.
ALTER TABLE users ADD COLUMN deleted_ts BIGINT;
