//! The inventory's rules: what a machine's name, group, reserved address and pinned disk may
//! be, that every change is audited, and that full DHCP hears of every change to a
//! reservation. The handlers ([`super::api`]) only parse the request and call these.

use std::net::Ipv4Addr;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::serve::db::{Db, DbError, MachineEdit};
use crate::serve::inventory::mac::Mac;

/// The inventory service: the repository, full DHCP's pool (when full DHCP runs) and the
/// signal that tells full DHCP its reservations changed.
pub(crate) struct Inventory {
    db: Db,
    /// Full DHCP's pool and the server's address on it.
    dhcp_pool: Option<(pxe::dhcp_full::Pool, Ipv4Addr)>,
    changed: Arc<Notify>,
}

/// A name (of a machine, group or schedule): 1 to 64 printable characters.
pub(crate) fn check_name(what: &str, n: &str) -> Result<(), DbError> {
    if n.is_empty() || n.len() > 64 || n.chars().any(|c| c.is_control()) {
        return Err(DbError::Invalid(format!(
            "{what} {n:?}: 1 to 64 printable characters"
        )));
    }
    Ok(())
}

/// The disk a machine's agent writes: `serial:...`, `size:BYTES` or `all-size:BYTES`, stored
/// in that form.
fn check_disk(d: &str) -> Result<String, DbError> {
    d.parse::<imaging::disks::Selector>()
        .map(|sel| sel.to_string())
        .map_err(DbError::Invalid)
}

pub(crate) fn parse_mac(s: &str) -> Result<Mac, DbError> {
    s.parse().map_err(DbError::Invalid)
}

impl Inventory {
    pub(crate) fn new(db: Db, dhcp_pool: Option<(pxe::dhcp_full::Pool, Ipv4Addr)>) -> Self {
        Self {
            db,
            dhcp_pool,
            changed: Arc::new(Notify::new()),
        }
    }

    /// Notified whenever a reservation or a machine's UEFI loader may have changed (DHCP
    /// reloads them).
    pub(crate) fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// Whether drover's own DHCP hands out the lab's addresses (its leases then name machines).
    pub(crate) fn full_dhcp(&self) -> bool {
        self.dhcp_pool.is_some()
    }

    /// A reservation's address: IPv4, and in full DHCP's subnet when full DHCP runs.
    fn check_ip(&self, ip: &str) -> Result<Ipv4Addr, DbError> {
        let a: Ipv4Addr = ip
            .parse()
            .map_err(|_| DbError::Invalid(format!("ip {ip:?}: not an IPv4 address")))?;
        if let Some((pool, server)) = &self.dhcp_pool {
            pool.check_reservation(a, *server)
                .map_err(DbError::Invalid)?;
        }
        Ok(a)
    }

    pub(crate) async fn machines(
        &self,
        group: Option<&str>,
    ) -> Result<Vec<proto::api::Machine>, DbError> {
        Ok(self.db.inventory().machines(group).await?)
    }

    pub(crate) async fn machine(&self, mac: Mac) -> Result<proto::api::Machine, DbError> {
        self.db.inventory().machine(mac).await
    }

    pub(crate) async fn groups(&self) -> Result<Vec<proto::api::Group>, DbError> {
        Ok(self.db.inventory().groups().await?)
    }

    pub(crate) async fn add_machine(
        &self,
        actor: &str,
        m: &proto::api::NewMachine,
    ) -> Result<proto::api::Machine, DbError> {
        let mac = parse_mac(&m.mac)?;
        let mut edit = MachineEdit::default();
        if let Some(n) = &m.name {
            check_name("name", n)?;
            edit.name = Some(n.clone());
        }
        if let Some(g) = &m.group {
            check_name("group", g)?;
            edit.group = Some(Some(g.clone()));
        }
        if let Some(ip) = &m.ip {
            edit.ip = Some(Some(self.check_ip(ip)?));
        }
        if let Some(d) = &m.disk {
            edit.target_disk = Some(Some(check_disk(d)?));
        }
        let added = self.db.inventory().add_machine(mac, &edit).await?;
        self.db
            .audit(actor, "machine.add", &format!("{mac} {:?}", added.name))
            .await?;
        if added.ip.is_some() || added.group.is_some() {
            self.changed.notify_one();
        }
        Ok(added)
    }

    pub(crate) async fn update_machine(
        &self,
        actor: &str,
        mac: Mac,
        patch: &proto::api::MachinePatch,
    ) -> Result<proto::api::Machine, DbError> {
        let mut edit = MachineEdit::default();
        if let Some(n) = &patch.name {
            check_name("name", n)?;
            edit.name = Some(n.clone());
        }
        if let Some(g) = &patch.group {
            if let Some(g) = g {
                check_name("group", g)?;
            }
            edit.group = Some(g.clone());
        }
        if let Some(ip) = &patch.ip {
            edit.ip = Some(ip.as_deref().map(|ip| self.check_ip(ip)).transpose()?);
        }
        if let Some(d) = &patch.disk {
            edit.target_disk = Some(d.as_deref().map(check_disk).transpose()?);
        }
        edit.vars = patch.vars.clone();
        let m = self.db.inventory().update_machine(mac, &edit).await?;
        let detail = serde_json::to_string(patch).map_err(anyhow::Error::from)?;
        self.db
            .audit(actor, "machine.update", &format!("{mac} {detail}"))
            .await?;
        if edit.ip.is_some() || edit.group.is_some() {
            self.changed.notify_one();
        }
        Ok(m)
    }

    pub(crate) async fn remove_machine(&self, actor: &str, mac: Mac) -> Result<(), DbError> {
        self.db.inventory().remove_machine(mac).await?;
        self.db
            .audit(actor, "machine.remove", &mac.to_string())
            .await?;
        self.changed.notify_one();
        Ok(())
    }

    pub(crate) async fn add_group(
        &self,
        actor: &str,
        g: &proto::api::NewGroup,
    ) -> Result<proto::api::Group, DbError> {
        check_name("group", &g.name)?;
        let added = self.db.inventory().add_group(&g.name).await?;
        self.db.audit(actor, "group.add", &g.name).await?;
        Ok(added)
    }

    /// Sets and removes a group's variables and boot settings.
    pub(crate) async fn patch_group(
        &self,
        actor: &str,
        name: &str,
        patch: &proto::api::GroupPatch,
    ) -> Result<proto::api::Group, DbError> {
        let g = self.db.inventory().patch_group(name, patch).await?;
        let detail = serde_json::to_string(patch).map_err(anyhow::Error::from)?;
        self.db
            .audit(actor, "group.update", &format!("{name} {detail}"))
            .await?;
        if patch.uefi_loader.is_some() {
            self.changed.notify_one();
        }
        Ok(g)
    }

    pub(crate) async fn remove_group(&self, actor: &str, name: &str) -> Result<(), DbError> {
        self.db.inventory().remove_group(name).await?;
        self.db.audit(actor, "group.remove", name).await?;
        self.changed.notify_one();
        Ok(())
    }

    /// The machines a wake-up names: its MACs and its group's machines, each once.
    pub(crate) async fn wake_targets(&self, w: &proto::api::Wake) -> Result<Vec<Mac>, DbError> {
        let mut macs = w
            .macs
            .iter()
            .map(|m| parse_mac(m))
            .collect::<Result<Vec<Mac>, _>>()?;
        if let Some(g) = &w.group {
            if !self.groups().await?.iter().any(|x| &x.name == g) {
                return Err(DbError::NotFound(format!("group {g:?}")));
            }
            for m in self.machines(Some(g)).await? {
                macs.push(parse_mac(&m.mac)?);
            }
        }
        macs.sort();
        macs.dedup();
        if macs.is_empty() {
            return Err(DbError::Invalid(
                "nothing to wake: give \"macs\" or a \"group\" with machines".into(),
            ));
        }
        Ok(macs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn service(dir: &tempfile::TempDir) -> Inventory {
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let pool = pxe::dhcp_full::Pool {
            first: Ipv4Addr::new(10, 0, 0, 100),
            last: Ipv4Addr::new(10, 0, 0, 200),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: None,
            dns: Vec::new(),
            lease_secs: 3600,
        };
        Inventory::new(
            Db::open(&url).await.unwrap(),
            Some((pool, Ipv4Addr::new(10, 0, 0, 1))),
        )
    }

    /// Whether full DHCP was told (without waiting long for a signal that is not coming).
    async fn told(n: &Notify) -> bool {
        tokio::time::timeout(Duration::from_millis(50), n.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn refuses_what_its_rules_refuse_and_tells_dhcp_of_reservations() {
        let dir = tempfile::tempdir().unwrap();
        let inv = service(&dir).await;
        let changed = inv.changed();
        let new = |mac: &str, ip: Option<&str>| proto::api::NewMachine {
            mac: mac.into(),
            name: None,
            group: None,
            ip: ip.map(str::to_string),
            disk: None,
        };
        for (m, why) in [
            (new("nonsense", None), "MAC"),
            (
                new("aa:bb:cc:00:00:01", Some("10.0.1.5")),
                "not in the lab's subnet",
            ),
            (
                new("aa:bb:cc:00:00:01", Some("10.0.0.1")),
                "the server's own address",
            ),
            (new("aa:bb:cc:00:00:01", Some("ten")), "not an IPv4 address"),
        ] {
            match inv.add_machine("token:t", &m).await {
                Err(DbError::Invalid(e)) => assert!(e.contains(why), "{e}"),
                other => panic!("{m:?}: {other:?}"),
            }
        }
        let mut bad_disk = new("aa:bb:cc:00:00:01", None);
        bad_disk.disk = Some("the big one".into());
        assert!(matches!(
            inv.add_machine("token:t", &bad_disk).await,
            Err(DbError::Invalid(_))
        ));
        assert!(inv.machines(None).await.unwrap().is_empty());
        assert!(!told(&changed).await, "nothing changed");

        // A machine without an address: no reservation, full DHCP not bothered.
        inv.add_machine("token:t", &new("aa:bb:cc:00:00:01", None))
            .await
            .unwrap();
        assert!(!told(&changed).await);
        // Reserving an address, and removing a machine, tell full DHCP.
        let patch: proto::api::MachinePatch =
            serde_json::from_str(r#"{"ip": "10.0.0.150", "group": "lab-1"}"#).unwrap();
        let mac = parse_mac("aa:bb:cc:00:00:01").unwrap();
        let m = inv.update_machine("token:t", mac, &patch).await.unwrap();
        assert_eq!(m.ip.as_deref(), Some("10.0.0.150"));
        assert!(told(&changed).await);
        let bad: proto::api::MachinePatch = serde_json::from_str(r#"{"group": ""}"#).unwrap();
        assert!(matches!(
            inv.update_machine("token:t", mac, &bad).await,
            Err(DbError::Invalid(_))
        ));
        // A group's UEFI loader tells DHCP; a bad one is refused.
        let loader: proto::api::GroupPatch =
            serde_json::from_str(r#"{"uefi_loader": "ipxe"}"#).unwrap();
        let g = inv.patch_group("token:t", "lab-1", &loader).await.unwrap();
        assert_eq!(g.uefi_loader.as_deref(), Some("ipxe"));
        assert!(told(&changed).await);
        let loaders = inv.db.inventory().uefi_loaders().await.unwrap();
        assert_eq!(loaders.get(&mac.0), Some(&pxe::dhcp::UefiLoader::Ipxe));
        let bad: proto::api::GroupPatch =
            serde_json::from_str(r#"{"uefi_loader": "grub"}"#).unwrap();
        match inv.patch_group("token:t", "lab-1", &bad).await {
            Err(DbError::Invalid(e)) => assert!(e.contains("shim"), "{e}"),
            other => panic!("{other:?}"),
        }
        let back: proto::api::GroupPatch =
            serde_json::from_str(r#"{"uefi_loader": null}"#).unwrap();
        let g = inv.patch_group("token:t", "lab-1", &back).await.unwrap();
        assert_eq!(g.uefi_loader, None);
        assert!(told(&changed).await);
        assert!(inv.db.inventory().uefi_loaders().await.unwrap().is_empty());
        inv.remove_machine("token:admin", mac).await.unwrap();
        assert!(told(&changed).await);
        assert!(matches!(
            inv.remove_machine("token:admin", mac).await,
            Err(DbError::NotFound(_))
        ));

        // Every change is in the audit log, by whom.
        let log = inv.db.audit_log(10).await.unwrap();
        let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "machine.remove",
                "group.update",
                "group.update",
                "machine.update",
                "machine.add"
            ],
            "{log:?}"
        );
        assert_eq!(log[0].actor, "token:admin");
    }

    #[tokio::test]
    async fn a_wake_names_machines_or_a_group_with_machines() {
        let dir = tempfile::tempdir().unwrap();
        let inv = service(&dir).await;
        let wake = |json: &str| serde_json::from_str::<proto::api::Wake>(json).unwrap();
        assert!(matches!(
            inv.wake_targets(&wake(r#"{"group": "nowhere"}"#)).await,
            Err(DbError::NotFound(_))
        ));
        assert!(matches!(
            inv.wake_targets(&wake(r#"{"macs": []}"#)).await,
            Err(DbError::Invalid(_))
        ));
        for mac in ["aa:bb:cc:00:00:02", "aa:bb:cc:00:00:01"] {
            let m = proto::api::NewMachine {
                mac: mac.into(),
                name: None,
                group: Some("lab-1".into()),
                ip: None,
                disk: None,
            };
            inv.add_machine("token:t", &m).await.unwrap();
        }
        let macs = inv
            .wake_targets(&wake(
                r#"{"macs": ["AA:BB:CC:00:00:01", "aa:bb:cc:00:00:09"], "group": "lab-1"}"#,
            ))
            .await
            .unwrap();
        let macs: Vec<String> = macs.iter().map(Mac::to_string).collect();
        assert_eq!(
            macs,
            [
                "aa:bb:cc:00:00:01",
                "aa:bb:cc:00:00:02",
                "aa:bb:cc:00:00:09"
            ]
        );
    }
}
