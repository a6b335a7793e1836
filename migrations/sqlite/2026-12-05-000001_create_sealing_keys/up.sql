-- Keys made once per deployment by the first instance to start, sealed under secrets.system
-- as the private signing keys are. The key that seals authorization codes lives here, so
-- that secrets.system alone (without the database) cannot make a code.
CREATE TABLE sealing_keys (
    purpose TEXT PRIMARY KEY NOT NULL,
    sealed_key BLOB NOT NULL,
    created_at BIGINT NOT NULL
);
