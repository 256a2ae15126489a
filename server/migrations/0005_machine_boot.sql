-- What an admin pins per machine for PXE: a fixed address from full DHCP (a reservation, one
-- machine per address), and the disk its agent writes ("serial:..." or "size:BYTES") when the
-- machine has more than one.
ALTER TABLE machines ADD COLUMN ip TEXT;
ALTER TABLE machines ADD COLUMN target_disk TEXT;
CREATE UNIQUE INDEX machines_ip ON machines (ip);
