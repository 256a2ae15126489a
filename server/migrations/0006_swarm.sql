-- BitTorrent (issue 6): the payload bytes each machine received from the swarm, and a
-- multicast deployment's fallback for its stragglers and late joiners (unicast, or the
-- swarm: bittorrent). Portable SQL, as 0001.
ALTER TABLE tasks ADD COLUMN swarm_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deployments ADD COLUMN fallback TEXT NOT NULL DEFAULT 'unicast';
