//! Full DHCP's leases in the database: written when bound, removed when released or
//! declined, read back at start.

use std::net::Ipv4Addr;

use sqlx::Row;

use crate::serve::db::{now_ms, Db};
use crate::serve::inventory::mac::Mac;

/// Full DHCP's leases, through the server's database handle.
pub(crate) struct Leases<'a> {
    db: &'a Db,
}

impl Db {
    /// Full DHCP's leases.
    pub(crate) fn leases(&self) -> Leases<'_> {
        Leases { db: self }
    }
}

impl Leases<'_> {
    /// Every persisted lease: (MAC, address, expiry in Unix milliseconds).
    pub(crate) async fn dhcp_leases(&self) -> anyhow::Result<Vec<(Mac, Ipv4Addr, i64)>> {
        let rows = sqlx::query("SELECT mac, ip, expires_ms FROM dhcp_leases")
            .fetch_all(&self.db.pool)
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let (mac, ip): (String, String) = (r.try_get("mac")?, r.try_get("ip")?);
            match (mac.parse::<Mac>(), ip.parse::<Ipv4Addr>()) {
                (Ok(m), Ok(a)) => out.push((m, a, r.try_get("expires_ms")?)),
                _ => {
                    tracing::warn!(%mac, %ip, "a DHCP lease in the database does not parse; skipped")
                }
            }
        }
        Ok(out)
    }

    pub(crate) async fn save_dhcp_lease(
        &self,
        mac: Mac,
        ip: Ipv4Addr,
        expires_ms: i64,
    ) -> anyhow::Result<()> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query("DELETE FROM dhcp_leases WHERE mac = $1")
            .bind(mac.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO dhcp_leases (mac, ip, expires_ms, updated_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(mac.to_string())
        .bind(ip.to_string())
        .bind(expires_ms)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn remove_dhcp_lease(&self, mac: Mac) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM dhcp_leases WHERE mac = $1")
            .bind(mac.to_string())
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }
}
