ALTER TABLE token_families DROP COLUMN refresh_idle_expires_at;
ALTER TABLE token_families DROP COLUMN refresh_created_at;
ALTER TABLE token_families DROP COLUMN refresh_generation;
ALTER TABLE token_families DROP COLUMN refresh_hash;
