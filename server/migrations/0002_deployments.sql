-- Deployments (one image to machines) and their tasks (one per machine, each with its own
-- state machine and agent token). Portable SQL, as 0001.

CREATE TABLE deployments (
    id           TEXT PRIMARY KEY,           -- 8 hex digits
    kind         TEXT NOT NULL,              -- restore
    image_id     TEXT NOT NULL,
    image_name   TEXT NOT NULL,              -- NAME@VERSION when created
    targets      TEXT NOT NULL,              -- what the admin named (MACs, groups), comma-separated
    transport    TEXT NOT NULL,              -- multicast | unicast
    min_machines BIGINT,                     -- multicast: start once this many joined
    max_wait_ms  BIGINT,                     -- multicast: start after this long regardless
    start_at_ms  BIGINT,                     -- multicast: start at this time regardless
    then_action  TEXT NOT NULL,              -- reboot | poweroff (what the agent does after)
    state        TEXT NOT NULL,              -- waiting | running | done | failed | cancelled
    owner        TEXT NOT NULL,              -- the server that runs its multicast session
    session      BIGINT,                     -- the live multicast session, if any
    mcast_group  TEXT,                       -- its group ADDR:PORT
    mcast_http   TEXT,                       -- its sender's HTTP ADDR:PORT
    created_by   TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    started_ms   BIGINT,
    finished_ms  BIGINT
);
CREATE INDEX deployments_state ON deployments (state);

CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,       -- 16 hex digits, the public half of its token
    deployment_id    TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    mac              TEXT NOT NULL,
    secret           TEXT NOT NULL,          -- BLAKE3 of the token's secret half, hex
    state            TEXT NOT NULL,          -- waiting | receiving | verifying | done | failed | cancelled
    reason           TEXT,                   -- why it failed or was cancelled
    bytes_done       BIGINT NOT NULL,
    bytes_total      BIGINT NOT NULL,
    rate_bps         BIGINT NOT NULL,
    multicast_chunks BIGINT NOT NULL,
    unicast_chunks   BIGINT NOT NULL,
    kept_chunks      BIGINT NOT NULL,
    created_ms       BIGINT NOT NULL,
    started_ms       BIGINT,
    updated_ms       BIGINT NOT NULL,
    finished_ms      BIGINT
);
CREATE INDEX tasks_mac ON tasks (mac);
CREATE INDEX tasks_deployment ON tasks (deployment_id);
