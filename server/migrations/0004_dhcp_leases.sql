-- Full DHCP's bound leases (--dhcp full), so a restart keeps every machine's address.
CREATE TABLE dhcp_leases (
    mac        TEXT PRIMARY KEY,             -- aa:bb:cc:dd:ee:ff
    ip         TEXT NOT NULL,
    expires_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
