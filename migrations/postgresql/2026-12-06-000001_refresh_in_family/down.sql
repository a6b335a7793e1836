-- The live refresh tokens go back to rows of their own, so that a version before this
-- migration (which finds a token by the digest of the whole string) still redeems them.
INSERT INTO refresh_tokens (token_hash, family_id, client_id, scope, created_at, idle_expires_at)
SELECT refresh_hash, id, client_id, scope, refresh_created_at, refresh_idle_expires_at
FROM token_families WHERE refresh_hash IS NOT NULL;
ALTER TABLE token_families DROP COLUMN refresh_idle_expires_at;
ALTER TABLE token_families DROP COLUMN refresh_created_at;
ALTER TABLE token_families DROP COLUMN refresh_generation;
ALTER TABLE token_families DROP COLUMN refresh_hash;
