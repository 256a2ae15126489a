-- The inventory: machines, their groups, API tokens and the audit log.
-- Portable SQL: the same migration runs on SQLite and PostgreSQL. Times are Unix
-- milliseconds (BIGINT); identifiers are TEXT.

CREATE TABLE groups (
    name       TEXT PRIMARY KEY,
    created_ms BIGINT NOT NULL
);

CREATE TABLE machines (
    mac          TEXT PRIMARY KEY,            -- lower-case aa:bb:cc:dd:ee:ff
    name         TEXT NOT NULL,
    group_name   TEXT REFERENCES groups (name) ON DELETE SET NULL,
    disk_serial  TEXT,
    disk_size    BIGINT,
    state        TEXT NOT NULL,               -- registered | idle | busy | ...
    registered   TEXT NOT NULL,               -- admin | hello
    last_seen_ms BIGINT,
    created_ms   BIGINT NOT NULL
);
CREATE INDEX machines_group ON machines (group_name);

CREATE TABLE api_tokens (
    id         TEXT PRIMARY KEY,              -- the public half of a token
    name       TEXT NOT NULL UNIQUE,
    secret     TEXT NOT NULL,                 -- BLAKE3 of the secret half, hex
    created_ms BIGINT NOT NULL
);

CREATE TABLE audit_log (
    id     TEXT PRIMARY KEY,
    at_ms  BIGINT NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at_ms);
