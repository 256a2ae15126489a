-- A deploy schedule's fallback for the stragglers and late joiners of its multicast
-- deployments (unicast, or the swarm: bittorrent), as deployments have since 0006.
-- Portable SQL, as 0001.
ALTER TABLE schedules ADD COLUMN fallback TEXT NOT NULL DEFAULT 'unicast';
