//! Several servers on one database: each says every few seconds that it is alive, each machine
//! remembers the server its agent last talked to (the one that booted it: its kernel command
//! line names it), and a deployment is run by the live server most of its machines talk to —
//! its multicast stream, its wake-up and its swarm seed then come from their own network. A
//! server that stops saying it is alive loses its machines to whichever server is asked.
//!
//! It does not move a deployment that is running: a stream lives in the memory of the server
//! that sends it.

use crate::serve::db::{now_ms, Db, DbError};

/// How often a server says it is alive.
pub(crate) const BEAT_MS: i64 = 5_000;
/// A server not heard for this long is gone: its machines' deployments run elsewhere.
pub(crate) const GONE_MS: i64 = 30_000;

/// The servers' queries.
pub(crate) struct Servers<'a> {
    db: &'a Db,
}

impl Db {
    /// The servers' queries.
    pub(crate) fn servers(&self) -> Servers<'_> {
        Servers { db: self }
    }
}

impl Servers<'_> {
    /// Server `id` (at `url`) is alive now.
    pub(crate) async fn beat(&self, id: &str, url: &str) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO servers (id, url, seen_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET url = excluded.url, seen_ms = excluded.seen_ms",
        )
        .bind(id)
        .bind(url)
        .bind(now_ms())
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// Server `id` stopped.
    pub(crate) async fn leave(&self, id: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE servers SET seen_ms = 0 WHERE id = $1")
            .bind(id)
            .execute(&self.db.pool)
            .await?;
        Ok(())
    }

    /// Machine `mac`'s agent talks to server `id`.
    pub(crate) async fn machine_seen_by(&self, mac: &str, id: &str) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE machines SET server = $1 WHERE mac = $2 AND (server IS NULL OR server <> $1)",
        )
        .bind(id)
        .bind(mac)
        .execute(&self.db.pool)
        .await?;
        Ok(())
    }

    /// The live server most of these machines talk to (ties: the lowest id), if any of them
    /// talks to a live one.
    pub(crate) async fn site_of(&self, macs: &[String]) -> Result<Option<String>, DbError> {
        let since = now_ms() - GONE_MS;
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        // In slices: a deployment to a few hundred machines stays one short query each.
        for part in macs.chunks(200) {
            let marks = (0..part.len())
                .map(|i| format!("${}", i + 2))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT m.server FROM machines m JOIN servers s ON s.id = m.server \
                 WHERE s.seen_ms >= $1 AND m.mac IN ({marks})"
            );
            let mut q = sqlx::query_scalar::<_, String>(&sql).bind(since);
            for m in part {
                q = q.bind(m);
            }
            for server in q.fetch_all(&self.db.pool).await? {
                *counts.entry(server).or_default() += 1;
            }
        }
        let most = counts.values().copied().max();
        Ok(counts
            .into_iter()
            .find(|(_, n)| Some(*n) == most)
            .map(|(id, _)| id))
    }

    /// Every server that ever used the database, newest heard first, with its machines.
    pub(crate) async fn list(&self, this: &str) -> Result<Vec<proto::api::ServerInfo>, DbError> {
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT s.id, s.url, s.seen_ms, \
             (SELECT COUNT(*) FROM machines m WHERE m.server = s.id) \
             FROM servers s ORDER BY s.seen_ms DESC, s.id",
        )
        .fetch_all(&self.db.pool)
        .await?;
        let since = now_ms() - GONE_MS;
        Ok(rows
            .into_iter()
            .map(|(id, url, seen_ms, machines)| proto::api::ServerInfo {
                this: id == this,
                alive: seen_ms >= since,
                machines: machines.max(0) as u64,
                id,
                url,
                seen_ms,
            })
            .collect())
    }
}

/// `GET /servers`: the servers sharing this database.
#[utoipa::path(get, path = "/servers", tag = "inventory",
    summary = "The servers sharing this database: which are alive, and how many machines talk to each",
    responses((status = 200, description = "servers, newest heard first", body = [proto::api::ServerInfo]),
        (status = 401, body = proto::api::ErrorBody)))]
pub(crate) async fn servers(
    axum::extract::State(s): axum::extract::State<crate::serve::web::api::Shared>,
) -> crate::serve::web::api::ApiResult<axum::Json<Vec<proto::api::ServerInfo>>> {
    Ok(axum::Json(s.db.servers().list(&s.deployer.owner).await?))
}

/// Says every [`BEAT_MS`] that this server is alive, until the server stops.
pub(crate) async fn beat(db: Db, id: String, url: String) -> anyhow::Result<()> {
    loop {
        if let Err(e) = db.servers().beat(&id, &url).await {
            tracing::warn!(error = %e, "could not tell the database this server is alive");
        }
        tokio::time::sleep(std::time::Duration::from_millis(BEAT_MS as u64)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn db_with(dir: &std::path::Path, macs: &[&str]) -> Db {
        let url = format!("sqlite://{}?mode=rwc", dir.join("t.db").display());
        let db = Db::open(&url).await.unwrap();
        for m in macs {
            db.deployments()
                .machine_hello(m.parse().unwrap(), None, None)
                .await
                .unwrap();
        }
        db
    }

    #[tokio::test]
    async fn a_deployment_goes_to_the_live_server_of_most_of_its_machines() {
        let macs = [
            "02:00:00:00:00:01",
            "02:00:00:00:00:02",
            "02:00:00:00:00:03",
        ];
        let dir = tempfile::tempdir().unwrap();
        let db = db_with(dir.path(), &macs).await;
        let all: Vec<String> = macs.iter().map(|m| m.to_string()).collect();
        let s = db.servers();
        // No machine talks to a server yet.
        assert_eq!(s.site_of(&all).await.unwrap(), None);
        s.beat("a", "http://a").await.unwrap();
        s.beat("b", "http://b").await.unwrap();
        s.machine_seen_by(macs[0], "a").await.unwrap();
        s.machine_seen_by(macs[1], "b").await.unwrap();
        s.machine_seen_by(macs[2], "b").await.unwrap();
        assert_eq!(s.site_of(&all).await.unwrap().as_deref(), Some("b"));
        // A tie goes to the lowest id, the same on every server.
        assert_eq!(s.site_of(&all[..2]).await.unwrap().as_deref(), Some("a"));
        // A server gone quiet (or stopped) has no machines.
        s.leave("b").await.unwrap();
        assert_eq!(s.site_of(&all).await.unwrap().as_deref(), Some("a"));
        assert_eq!(s.site_of(&all[1..]).await.unwrap(), None);
        let listed = s.list("a").await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(
            (listed[0].id.as_str(), listed[0].alive, listed[0].this),
            ("a", true, true)
        );
        assert_eq!((listed[0].machines, listed[1].machines), (1, 2));
        assert_eq!(
            (listed[1].id.as_str(), listed[1].alive, listed[1].this),
            ("b", false, false)
        );
    }
}
