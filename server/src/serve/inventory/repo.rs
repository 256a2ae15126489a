//! The machines' and groups' queries.

use sqlx::any::AnyRow;
use sqlx::Row;

use crate::serve::db::{
    is_unique_violation, json_column, now_ms, parsed, Db, DbError, Group, Machine, MachineEdit,
};
use crate::serve::inventory::mac::Mac;
use proto::api::{MachineState, Registered};

/// The machines' and groups' queries, through the server's database handle.
pub(crate) struct Inventory<'a> {
    db: &'a Db,
}

impl Db {
    /// The machines' and groups' queries.
    pub(crate) fn inventory(&self) -> Inventory<'_> {
        Inventory { db: self }
    }
}

/// A machine of a row of `MACHINE_COLUMNS`.
fn machine(r: &AnyRow) -> Result<Machine, sqlx::Error> {
    Ok(Machine {
        mac: r.try_get("mac")?,
        name: r.try_get("name")?,
        group: r.try_get("group_name")?,
        disk_serial: r.try_get("disk_serial")?,
        disk_size: r
            .try_get::<Option<i64>, _>("disk_size")?
            .map(|n| n.max(0) as u64),
        ip: r.try_get("ip")?,
        target_disk: r.try_get("target_disk")?,
        state: parsed(r, "state")?,
        registered: parsed(r, "registered")?,
        last_seen_ms: r.try_get("last_seen_ms")?,
        created_ms: r.try_get("created_ms")?,
        vars: vars(r)?,
    })
}

/// The `vars` column: a JSON object of strings.
fn vars(r: &AnyRow) -> Result<proto::template::Vars, sqlx::Error> {
    json_column(r, "vars")
}

/// `vars` with `patch` applied: a value sets, `null` removes. Every name and value is checked.
pub(crate) fn patched(
    vars: &proto::template::Vars,
    patch: &proto::api::VarsPatch,
) -> Result<proto::template::Vars, DbError> {
    let mut v = vars.clone();
    for (k, x) in patch {
        match x {
            Some(x) => {
                proto::template::check_var(k, x).map_err(DbError::Invalid)?;
                v.insert(k.clone(), x.clone());
            }
            None => {
                v.remove(k);
            }
        }
    }
    Ok(v)
}

fn json(v: &proto::template::Vars) -> String {
    serde_json::to_string(v).expect("a map of strings serializes")
}

/// The machines' columns, in the order [`machine`] reads them.
const MACHINE_COLUMNS: &str = "mac, name, group_name, disk_serial, disk_size, ip, target_disk, \
                               state, registered, last_seen_ms, created_ms, vars";

impl Inventory<'_> {
    /// Adds a machine by an admin, or returns `Exists` (the MAC, or the reserved address).
    pub(crate) async fn add_machine(
        &self,
        mac: Mac,
        edit: &MachineEdit,
    ) -> Result<Machine, DbError> {
        let group = edit.group.clone().flatten();
        if let Some(g) = &group {
            self.ensure_group(g).await?;
        }
        let m = Machine {
            mac: mac.to_string(),
            name: edit.name.clone().unwrap_or_else(|| mac.default_name()),
            group,
            disk_serial: None,
            disk_size: None,
            ip: edit.ip.flatten().map(|a| a.to_string()),
            target_disk: edit.target_disk.clone().flatten(),
            state: MachineState::Registered,
            registered: Registered::Admin,
            last_seen_ms: None,
            created_ms: now_ms(),
            vars: match &edit.vars {
                Some(p) => patched(&Default::default(), p)?,
                None => Default::default(),
            },
        };
        if let Some(ip) = &m.ip {
            self.check_ip_free(ip, &m.mac).await?;
        }
        let r = sqlx::query(&format!(
            "INSERT INTO machines ({MACHINE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(&m.mac)
        .bind(&m.name)
        .bind(&m.group)
        .bind(&m.disk_serial)
        .bind(m.disk_size.map(|n| n.min(i64::MAX as u64) as i64))
        .bind(&m.ip)
        .bind(&m.target_disk)
        .bind(m.state.as_str())
        .bind(m.registered.as_str())
        .bind(m.last_seen_ms)
        .bind(m.created_ms)
        .bind(json(&m.vars))
        .execute(&self.db.pool)
        .await;
        match r {
            Ok(_) => Ok(m),
            Err(e) if is_unique_violation(&e) => Err(DbError::Exists(format!("machine {mac}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// `Exists` naming the holder when another machine has `ip` reserved.
    async fn check_ip_free(&self, ip: &str, mac: &str) -> Result<(), DbError> {
        let holder = sqlx::query("SELECT mac FROM machines WHERE ip = $1 AND mac <> $2")
            .bind(ip)
            .bind(mac)
            .fetch_optional(&self.db.pool)
            .await?;
        match holder {
            Some(r) => Err(DbError::Exists(format!(
                "a reservation of {ip} (for {})",
                r.try_get::<String, _>("mac")?
            ))),
            None => Ok(()),
        }
    }

    /// Every reservation: (MAC, address).
    pub(crate) async fn reservations(&self) -> anyhow::Result<Vec<(Mac, std::net::Ipv4Addr)>> {
        let rows = sqlx::query("SELECT mac, ip FROM machines WHERE ip IS NOT NULL ORDER BY mac")
            .fetch_all(&self.db.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mac: String = r.try_get("mac")?;
            let ip: String = r.try_get("ip")?;
            if let (Ok(mac), Ok(ip)) = (mac.parse(), ip.parse()) {
                out.push((mac, ip));
            }
        }
        Ok(out)
    }

    /// Every machine, by group then name; only those of `group` if given.
    pub(crate) async fn machines(&self, group: Option<&str>) -> anyhow::Result<Vec<Machine>> {
        let rows = match group {
            Some(g) => {
                sqlx::query(&format!(
                "SELECT {MACHINE_COLUMNS} FROM machines WHERE group_name = $1 ORDER BY name, mac"
            ))
                .bind(g)
                .fetch_all(&self.db.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {MACHINE_COLUMNS} FROM machines ORDER BY group_name, name, mac"
                ))
                .fetch_all(&self.db.pool)
                .await?
            }
        };
        Ok(rows.iter().map(machine).collect::<Result<_, _>>()?)
    }

    /// One machine.
    pub(crate) async fn machine(&self, mac: Mac) -> Result<Machine, DbError> {
        let row = sqlx::query(&format!(
            "SELECT {MACHINE_COLUMNS} FROM machines WHERE mac = $1"
        ))
        .bind(mac.to_string())
        .fetch_optional(&self.db.pool)
        .await?;
        match row {
            Some(r) => Ok(machine(&r)?),
            None => Err(DbError::NotFound(format!("machine {mac}"))),
        }
    }

    /// Changes a machine's name and/or group (`Some(None)` takes it out of its group).
    pub(crate) async fn update_machine(
        &self,
        mac: Mac,
        edit: &MachineEdit,
    ) -> Result<Machine, DbError> {
        let mut m = self.machine(mac).await?;
        if let Some(Some(g)) = &edit.group {
            self.ensure_group(g).await?;
        }
        if let Some(n) = &edit.name {
            m.name = n.clone();
        }
        if let Some(g) = &edit.group {
            m.group = g.clone();
        }
        if let Some(ip) = edit.ip {
            m.ip = ip.map(|a| a.to_string());
        }
        if let Some(d) = &edit.target_disk {
            m.target_disk = d.clone();
        }
        if let Some(p) = &edit.vars {
            m.vars = patched(&m.vars, p)?;
        }
        if let Some(ip) = &m.ip {
            self.check_ip_free(ip, &m.mac).await?;
        }
        let r = sqlx::query(
            "UPDATE machines SET name = $1, group_name = $2, ip = $3, target_disk = $4, \
             vars = $5 WHERE mac = $6",
        )
        .bind(&m.name)
        .bind(&m.group)
        .bind(&m.ip)
        .bind(&m.target_disk)
        .bind(json(&m.vars))
        .bind(&m.mac)
        .execute(&self.db.pool)
        .await;
        match r {
            Ok(_) => Ok(m),
            // Two admins reserving one address at once: the index decides.
            Err(e) if is_unique_violation(&e) => Err(DbError::Exists(format!(
                "a reservation of {}",
                m.ip.as_deref().unwrap_or("?")
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes a machine.
    pub(crate) async fn remove_machine(&self, mac: Mac) -> Result<(), DbError> {
        let r = sqlx::query("DELETE FROM machines WHERE mac = $1")
            .bind(mac.to_string())
            .execute(&self.db.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound(format!("machine {mac}")));
        }
        Ok(())
    }

    async fn ensure_group(&self, name: &str) -> Result<(), DbError> {
        let exists = sqlx::query("SELECT name FROM groups WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.db.pool)
            .await?
            .is_some();
        if !exists {
            match self.add_group(name).await {
                Ok(_) | Err(DbError::Exists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Adds a group.
    pub(crate) async fn add_group(&self, name: &str) -> Result<Group, DbError> {
        let created_ms = now_ms();
        let r = sqlx::query("INSERT INTO groups (name, created_ms) VALUES ($1, $2)")
            .bind(name)
            .bind(created_ms)
            .execute(&self.db.pool)
            .await;
        match r {
            Ok(_) => Ok(Group {
                name: name.to_string(),
                machines: 0,
                created_ms,
                vars: Default::default(),
                keep_network_first: false,
                uefi_loader: None,
                layout: None,
            }),
            Err(e) if is_unique_violation(&e) => Err(DbError::Exists(format!("group {name:?}"))),
            Err(e) => Err(e.into()),
        }
    }

    /// Every group with its number of machines.
    pub(crate) async fn groups(&self) -> anyhow::Result<Vec<Group>> {
        let rows = sqlx::query(
            "SELECT g.name AS name, g.created_ms AS created_ms, g.vars AS vars, \
                    g.keep_network_first AS keep_network_first, g.uefi_loader AS uefi_loader, \
                    g.layout AS layout, \
                    (SELECT COUNT(*) FROM machines m WHERE m.group_name = g.name) AS machines \
             FROM groups g ORDER BY g.name",
        )
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Group {
                    name: r.try_get("name")?,
                    machines: r.try_get::<i64, _>("machines")?.max(0) as u64,
                    created_ms: r.try_get("created_ms")?,
                    vars: vars(r)?,
                    keep_network_first: r.try_get::<i64, _>("keep_network_first")? != 0,
                    uefi_loader: r.try_get("uefi_loader")?,
                    layout: crate::serve::db::parsed_opt(r, "layout")?,
                })
            })
            .collect()
    }

    /// One group.
    pub(crate) async fn group(&self, name: &str) -> Result<Group, DbError> {
        self.groups()
            .await?
            .into_iter()
            .find(|g| g.name == name)
            .ok_or_else(|| DbError::NotFound(format!("group {name:?}")))
    }

    /// Sets and removes a group's variables, and sets its boot-order default.
    pub(crate) async fn patch_group(
        &self,
        name: &str,
        patch: &proto::api::GroupPatch,
    ) -> Result<Group, DbError> {
        let mut g = self.group(name).await?;
        if let Some(p) = &patch.vars {
            g.vars = patched(&g.vars, p)?;
        }
        if let Some(k) = patch.keep_network_first {
            g.keep_network_first = k;
        }
        if let Some(l) = &patch.uefi_loader {
            if let Some(l) = l {
                pxe::dhcp::UefiLoader::parse(l).map_err(DbError::Invalid)?;
            }
            g.uefi_loader.clone_from(l);
        }
        if let Some(l) = patch.layout {
            g.layout = l;
        }
        sqlx::query(
            "UPDATE groups SET vars = $1, keep_network_first = $2, uefi_loader = $3, \
             layout = $5 WHERE name = $4",
        )
        .bind(json(&g.vars))
        .bind(i64::from(g.keep_network_first))
        .bind(&g.uefi_loader)
        .bind(name)
        .bind(g.layout.map(|l| l.as_str()))
        .execute(&self.db.pool)
        .await?;
        Ok(g)
    }

    /// The machines whose group chose their UEFI loader, with that choice.
    pub(crate) async fn uefi_loaders(
        &self,
    ) -> anyhow::Result<std::collections::HashMap<[u8; 6], pxe::dhcp::UefiLoader>> {
        let rows = sqlx::query(
            "SELECT m.mac AS mac, g.uefi_loader AS uefi_loader FROM machines m \
             JOIN groups g ON g.name = m.group_name WHERE g.uefi_loader IS NOT NULL",
        )
        .fetch_all(&self.db.pool)
        .await?;
        let mut out = std::collections::HashMap::new();
        for r in &rows {
            let mac: String = r.try_get("mac")?;
            let loader: String = r.try_get("uefi_loader")?;
            if let (Ok(m), Ok(l)) = (
                crate::serve::inventory::service::parse_mac(&mac),
                pxe::dhcp::UefiLoader::parse(&loader),
            ) {
                out.insert(m.0, l);
            }
        }
        Ok(out)
    }

    /// Removes a group; its machines stay, without a group.
    pub(crate) async fn remove_group(&self, name: &str) -> Result<(), DbError> {
        sqlx::query("UPDATE machines SET group_name = NULL WHERE group_name = $1")
            .bind(name)
            .execute(&self.db.pool)
            .await?;
        let r = sqlx::query("DELETE FROM groups WHERE name = $1")
            .bind(name)
            .execute(&self.db.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound(format!("group {name:?}")));
        }
        Ok(())
    }

    /// Machines per state, for `/metrics`.
    pub(crate) async fn machine_states(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let rows =
            sqlx::query("SELECT state, COUNT(*) AS n FROM machines GROUP BY state ORDER BY state")
                .fetch_all(&self.db.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn inventory_round_trip_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let db = Db::open(&url).await.unwrap();
        let mac: Mac = "AA-BB-CC-00-11-22".parse().unwrap();
        let m = db
            .inventory()
            .add_machine(
                mac,
                &MachineEdit {
                    group: Some(Some("lab-1".into())),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(m.mac, "aa:bb:cc:00:11:22");
        assert_eq!(m.group.as_deref(), Some("lab-1"));
        assert!(matches!(
            db.inventory()
                .add_machine(mac, &MachineEdit::default())
                .await,
            Err(DbError::Exists(_))
        ));
        assert_eq!(
            db.inventory().machines(Some("lab-1")).await.unwrap(),
            vec![m.clone()]
        );
        let g = db.inventory().groups().await.unwrap();
        assert_eq!((g[0].name.as_str(), g[0].machines), ("lab-1", 1));
        let m2 = db
            .inventory()
            .update_machine(
                mac,
                &MachineEdit {
                    name: Some("pc-7".into()),
                    group: Some(None),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!((m2.name.as_str(), m2.group), ("pc-7", None));
        db.inventory().remove_group("lab-1").await.unwrap();
        db.inventory().remove_machine(mac).await.unwrap();
        assert!(matches!(
            db.inventory().remove_machine(mac).await,
            Err(DbError::NotFound(_))
        ));

        let t = db.create_token("ci").await.unwrap();
        assert_eq!(db.check_token(&t).await.unwrap().as_deref(), Some("ci"));
        let mut forged = t.clone();
        forged.pop();
        forged.push(if t.ends_with('0') { '1' } else { '0' });
        assert_eq!(db.check_token(&forged).await.unwrap(), None);
        assert_eq!(db.check_token("nonsense").await.unwrap(), None);
        assert!(matches!(
            db.create_token("ci").await,
            Err(DbError::Exists(_))
        ));

        db.audit("ci", "machine.add", "x").await.unwrap();
        assert_eq!(db.audit_log(10).await.unwrap().len(), 1);
        // Reopening runs no migration twice and keeps the data.
        drop(db);
        let db = Db::open(&url).await.unwrap();
        assert_eq!(db.check_token(&t).await.unwrap().as_deref(), Some("ci"));
    }
}
