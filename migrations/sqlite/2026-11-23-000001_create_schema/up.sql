-- One schema for the whole mission. Portable types only (TEXT, BIGINT, BOOLEAN, binary),
-- timestamps are unix seconds, ids are TEXT, so the same diesel code runs on both backends.

CREATE TABLE clients (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    secret_hash TEXT,
    redirect_uris TEXT NOT NULL,
    grant_types TEXT NOT NULL,
    scopes TEXT NOT NULL,
    default_scopes TEXT NOT NULL,
    audience TEXT NOT NULL,
    allowed_origins TEXT NOT NULL,
    skip_consent BOOLEAN NOT NULL,
    enabled BOOLEAN NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE users (
    id TEXT PRIMARY KEY NOT NULL,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    disabled BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE browser_sessions (
    id_hash TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    authenticated_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL
);
CREATE INDEX browser_sessions_user ON browser_sessions (user_id);

CREATE TABLE consents (
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    scope TEXT NOT NULL,
    granted_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, client_id)
);

-- A family groups every refresh and access token descended from one grant (one code
-- redemption or one password grant), so that reuse detection can revoke all of them.
CREATE TABLE token_families (
    id TEXT PRIMARY KEY NOT NULL,
    client_id TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    user_id TEXT REFERENCES users (id) ON DELETE CASCADE,
    grant_type TEXT NOT NULL,
    scope TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE authorization_codes (
    code_hash TEXT PRIMARY KEY NOT NULL,
    client_id TEXT NOT NULL REFERENCES clients (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- the registered redirect_uri the code is bound to, and whether the request named it
    -- (RFC 6749 4.1.3: the token request must repeat it only if it was sent)
    redirect_uri TEXT NOT NULL,
    redirect_uri_sent BOOLEAN NOT NULL,
    scope TEXT NOT NULL,
    code_challenge TEXT,
    nonce TEXT,
    auth_time BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    redeemed_at BIGINT,
    -- set when a redeemed code is presented again; a redemption that links its tokens after
    -- that sees it and revokes them
    replayed_at BIGINT,
    family_id TEXT REFERENCES token_families (id) ON DELETE SET NULL
);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    family_id TEXT NOT NULL REFERENCES token_families (id) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    idle_expires_at BIGINT NOT NULL,
    rotated_at BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

-- Access tokens are self-contained JWTs; a row exists only for those revoked one by one. A
-- family's tokens name the family in their jti, so a family revocation reaches them without
-- a row (versions before that wrote one per token, with family_id set). Only comments in
-- this file changed since it was first applied.
CREATE TABLE access_tokens (
    jti TEXT PRIMARY KEY NOT NULL,
    family_id TEXT REFERENCES token_families (id) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX access_tokens_family ON access_tokens (family_id);

CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY NOT NULL,
    algorithm TEXT NOT NULL,
    key_bits INTEGER NOT NULL,
    public_n TEXT NOT NULL,
    public_e TEXT NOT NULL,
    encrypted_private_key BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT,
    publish_until BIGINT
);

-- Failed logins and password grants, shared by every instance for rate limiting.
CREATE TABLE auth_failures (
    id TEXT PRIMARY KEY NOT NULL,
    bucket TEXT NOT NULL,
    occurred_at BIGINT NOT NULL
);
CREATE INDEX auth_failures_bucket ON auth_failures (bucket, occurred_at);

CREATE TABLE audit_events (
    id TEXT PRIMARY KEY NOT NULL,
    occurred_at BIGINT NOT NULL,
    event TEXT NOT NULL,
    outcome TEXT NOT NULL,
    user_id TEXT,
    client_id TEXT,
    ip TEXT,
    detail TEXT
);
CREATE INDEX audit_events_time ON audit_events (occurred_at);
