-- A family's one live refresh token lives in the family's row, so that rotating it is one
-- UPDATE of that row: its digest, its generation (counted from 1, named in the token), when
-- it was issued and when it expires unused. NULL digest: the client may not refresh, or
-- the family's live token is one of the earlier format, still a row of refresh_tokens.
-- refresh_tokens keeps only those earlier tokens; nothing new is written there.
ALTER TABLE token_families ADD COLUMN refresh_hash TEXT;
ALTER TABLE token_families ADD COLUMN refresh_generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_families ADD COLUMN refresh_created_at BIGINT;
ALTER TABLE token_families ADD COLUMN refresh_idle_expires_at BIGINT;
