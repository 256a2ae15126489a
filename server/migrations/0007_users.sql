-- The dashboard (issue 7): its users (argon2id password hashes in PHC form) and their login
-- sessions (the cookie's BLAKE3 hash; the form token every form of the session carries).
-- Portable SQL, as 0001.
CREATE TABLE users (
    name          TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    -- 1: the password was generated (first run) and must be changed at the next login.
    must_change   BIGINT NOT NULL DEFAULT 0,
    created_ms    BIGINT NOT NULL
);

CREATE TABLE web_sessions (
    id_hash    TEXT PRIMARY KEY,
    user_name  TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    csrf       TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX web_sessions_user ON web_sessions (user_name);
