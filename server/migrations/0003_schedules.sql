-- Schedules (cron or one-shot; a redeploy or a wake-up) and their runs. A run row is the
-- once-only claim of one due time: servers sharing one PostgreSQL all try to insert it, the
-- primary key lets exactly one of them act. Portable SQL, as 0001.

CREATE TABLE schedules (
    id           TEXT PRIMARY KEY,           -- 8 hex digits
    name         TEXT NOT NULL UNIQUE,
    cron         TEXT,                       -- cron expression, server local time; or NULL
    at_ms        BIGINT,                     -- one-shot time; or NULL
    action       TEXT NOT NULL,              -- deploy | wake
    image        TEXT,                       -- deploy: the image reference, resolved at each run
    targets      TEXT NOT NULL,              -- MACs and groups, comma-separated
    transport    TEXT NOT NULL,              -- deploy: multicast | unicast
    min_machines BIGINT,
    max_wait_ms  BIGINT,
    then_action  TEXT NOT NULL,              -- deploy: reboot | poweroff
    wake_lead_ms BIGINT,                     -- deploy: run (and wake) this long before; NULL: the server's default
    created_by   TEXT NOT NULL,
    created_ms   BIGINT NOT NULL
);

CREATE TABLE schedule_runs (
    schedule_id   TEXT NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    due_ms        BIGINT NOT NULL,           -- the occurrence this run is for
    server        TEXT NOT NULL,             -- the server that claimed it
    outcome       TEXT NOT NULL,             -- running | done | missed | failed
    detail        TEXT,                      -- what happened, in words
    deployment_id TEXT,                      -- the deployment it created
    at_ms         BIGINT NOT NULL,           -- when it was claimed
    PRIMARY KEY (schedule_id, due_ms)
);
