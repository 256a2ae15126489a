-- Several servers on one database (issue 22): each says it is alive every few seconds (its
-- public URL, for people), each machine remembers the server its agent last talked to, and a
-- deployment is run by its machines' server. A deployment's "start now" asked on another server
-- is a request its owner acts on. Portable SQL, as 0001.
CREATE TABLE servers (
    id       TEXT PRIMARY KEY,
    url      TEXT NOT NULL,
    seen_ms  BIGINT NOT NULL
);
ALTER TABLE machines ADD COLUMN server TEXT;
ALTER TABLE deployments ADD COLUMN start_requested_ms BIGINT;
