//! The admin commands that talk to a running server over its HTTP API: `drover machine ...`,
//! `drover group ...`. They print text, or the API's JSON with `--json`.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use transport::fmt;

/// Where the server is and how to prove who we are.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// The server's URL.
    #[arg(long, env = "DROVER_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// API token (`drover token create NAME` on the server host).
    #[arg(long, env = "DROVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum MachineCommand {
    /// Add a machine by its MAC address.
    Add {
        /// aa:bb:cc:dd:ee:ff
        mac: String,
        /// A name (default: pc- and the MAC's last three bytes).
        #[arg(long)]
        name: Option<String>,
        /// The group it belongs to (created if new).
        #[arg(long)]
        group: Option<String>,
        /// Its fixed address from full DHCP (a reservation).
        #[arg(long)]
        ip: Option<String>,
        /// The disk its agent writes when it has several: serial:SERIAL or size:BYTES, or
        /// all-size:BYTES (every fixed disk of that size, each written).
        #[arg(long)]
        disk: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List machines.
    List {
        /// Only this group's.
        #[arg(long)]
        group: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Change a machine: its name, group, reserved address or pinned disk.
    Set {
        mac: String,
        #[arg(long)]
        name: Option<String>,
        /// The new group; `--no-group` takes it out of its group.
        #[arg(long, conflicts_with = "no_group")]
        group: Option<String>,
        #[arg(long)]
        no_group: bool,
        /// Its fixed address from full DHCP; `--no-ip` drops the reservation.
        #[arg(long, conflicts_with = "no_ip")]
        ip: Option<String>,
        #[arg(long)]
        no_ip: bool,
        /// The disk its agent writes (serial:SERIAL or size:BYTES; all-size:BYTES: every
        /// fixed disk of that size); `--no-disk`: the only one.
        #[arg(long, conflicts_with = "no_disk")]
        disk: Option<String>,
        #[arg(long)]
        no_disk: bool,
        #[command(flatten)]
        vars: VarArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove a machine from the inventory.
    Rm {
        mac: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// Add a group.
    Add {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List groups.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove a group (its machines stay, without a group).
    Rm {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Set or remove a group's personalization variables (its machines' own win), and its
    /// machines' UEFI boot-order default.
    Set {
        name: String,
        #[command(flatten)]
        vars: VarArgs,
        /// Its UEFI machines keep network boot first after a deployment, unless the
        /// deployment says otherwise.
        #[arg(long, value_name = "on|off", value_parser = ["on", "off"])]
        keep_network_first: Option<String>,
        /// What its UEFI x64 machines start from the network: shim (the Secure Boot chain),
        /// ipxe (Secure Boot off), or default (the server's uefi_loader).
        #[arg(long, value_name = "shim|ipxe|default", value_parser = ["shim", "ipxe", "default"])]
        uefi_loader: Option<String>,
        /// How restores to its machines use disks larger than the image's, unless a
        /// deployment says: grow (the default), keep or proportional.
        #[arg(long, value_name = "grow|keep|proportional")]
        layout: Option<proto::api::Layout>,
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// Personalization variables to set and remove.
#[derive(Debug, Args)]
pub(crate) struct VarArgs {
    /// Sets a variable (used by hostname and file templates as {KEY}); repeatable.
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = key_value)]
    set: Vec<(String, String)>,
    /// Removes a variable; repeatable.
    #[arg(long = "unset-var", value_name = "KEY")]
    unset: Vec<String>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: KEY=VALUE"))?;
    proto::template::check_var(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

impl VarArgs {
    /// The patch, if any variable is named.
    fn patch(self) -> Option<proto::api::VarsPatch> {
        if self.set.is_empty() && self.unset.is_empty() {
            return None;
        }
        let mut p: proto::api::VarsPatch = self.unset.into_iter().map(|k| (k, None)).collect();
        p.extend(self.set.into_iter().map(|(k, v)| (k, Some(v))));
        Some(p)
    }
}

/// `drover wake`: magic packets to machines by MAC, or to every machine of a group.
#[derive(Debug, Args)]
pub(crate) struct WakeArgs {
    /// MAC addresses (any machine, in the inventory or not).
    macs: Vec<String>,
    /// Every machine of this group.
    #[arg(long)]
    group: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

/// `drover wake`
pub(crate) fn wake(a: WakeArgs, json: bool) -> anyhow::Result<()> {
    if a.macs.is_empty() && a.group.is_none() {
        bail!("nothing to wake: give MAC addresses or --group");
    }
    let r = call(
        &a.server,
        "/wake",
        Method::post(&proto::api::Wake {
            macs: a.macs,
            group: a.group,
        })?,
    )?;
    if json {
        print_json(&r);
    } else {
        let r: proto::api::Woken = typed(&r)?;
        println!(
            "sent wake-on-LAN to {} machine(s) via {}",
            r.woken.len(),
            r.to
        );
        for m in r.woken {
            println!("  {m}");
        }
    }
    Ok(())
}

/// An API call's method.
pub(crate) enum Method {
    Get,
    Post(Value),
    Patch(Value),
    Delete,
}

impl Method {
    /// A POST of one of the API's request types.
    pub(crate) fn post<T: serde::Serialize>(body: &T) -> anyhow::Result<Self> {
        Ok(Self::Post(serde_json::to_value(body)?))
    }
}

/// Calls the API; returns the JSON answer (`null` for an empty one) or the server's error.
pub(crate) fn call(s: &ServerArgs, path: &str, method: Method) -> anyhow::Result<Value> {
    let base = s.server.trim_end_matches('/');
    let url = format!("{base}/api/v1{path}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()?;
        let req = match method {
            Method::Get => client.get(&url),
            Method::Post(b) => client.post(&url).json(&b),
            Method::Patch(b) => client.patch(&url).json(&b),
            Method::Delete => client.delete(&url),
        };
        let req = match &s.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the drover server at {base}"))?;
        let status = resp.status();
        let body = resp.bytes().await.context("reading the server's answer")?;
        let value: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(&body).trim().to_string())
            })
        };
        if !status.is_success() {
            let msg = value
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            if status == reqwest::StatusCode::UNAUTHORIZED && s.token.is_none() {
                bail!("{msg} (give it with --token or DROVER_TOKEN)");
            }
            bail!("{msg} (HTTP {})", status.as_u16());
        }
        Ok(value)
    })
}

pub(crate) fn print_json(v: &Value) {
    println!("{v}");
}

/// An answer of the API as one of `proto::api`'s types.
pub(crate) fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> anyhow::Result<T> {
    T::deserialize(v).context("the server's answer is not what this drover expects")
}

fn machine_line(m: &Value) -> anyhow::Result<String> {
    let m: proto::api::Machine = typed(m)?;
    let seen = m
        .last_seen_ms
        .map_or_else(|| "never".into(), |t| fmt::time((t / 1000) as u64));
    Ok(format!(
        "{:<17}  {:<20}  {:<16}  {:<15}  {:<10}  {}{}",
        m.mac,
        m.name,
        m.group.as_deref().unwrap_or("-"),
        m.ip.as_deref().unwrap_or("-"),
        m.state,
        seen,
        vars_text(&m.vars)
    ))
}

/// `drover machine ...`
pub(crate) fn machine(cmd: MachineCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        MachineCommand::Add {
            mac,
            name,
            group,
            ip,
            disk,
            server,
        } => {
            let m = call(
                &server,
                "/machines",
                Method::post(&proto::api::NewMachine {
                    mac,
                    name,
                    group,
                    ip,
                    disk,
                })?,
            )?;
            if json {
                print_json(&m);
            } else {
                println!("added {}", machine_line(&m)?);
            }
        }
        MachineCommand::List { group, server } => {
            let path = match &group {
                Some(g) => format!("/machines?group={}", urlencode(g)),
                None => "/machines".into(),
            };
            let all = call(&server, &path, Method::Get)?;
            if json {
                print_json(&all);
            } else {
                let list: Vec<Value> = typed(&all)?;
                if list.is_empty() {
                    println!("no machines");
                } else {
                    println!(
                        "{:<17}  {:<20}  {:<16}  {:<15}  {:<10}  LAST SEEN",
                        "MAC", "NAME", "GROUP", "IP", "STATE"
                    );
                    for m in &list {
                        println!("{}", machine_line(m)?);
                    }
                }
            }
        }
        MachineCommand::Set {
            mac,
            name,
            group,
            no_group,
            ip,
            no_ip,
            disk,
            no_disk,
            vars,
            server,
        } => {
            // A --no-... flag clears the field (null); a value sets it; neither leaves it.
            let change = |clear: bool, value: Option<String>| {
                if clear {
                    Some(None)
                } else {
                    value.map(Some)
                }
            };
            let patch = proto::api::MachinePatch {
                name,
                group: change(no_group, group),
                ip: change(no_ip, ip),
                disk: change(no_disk, disk),
                vars: vars.patch(),
            };
            if patch == proto::api::MachinePatch::default() {
                bail!(
                    "nothing to change: give --name, --group, --ip, --disk, --var, --unset-var \
                     or a --no-... flag"
                );
            }
            let m = call(
                &server,
                &format!("/machines/{}", urlencode(&mac)),
                Method::Patch(serde_json::to_value(&patch)?),
            )?;
            if json {
                print_json(&m);
            } else {
                println!("changed {}", machine_line(&m)?);
            }
        }
        MachineCommand::Rm { mac, server } => {
            call(
                &server,
                &format!("/machines/{}", urlencode(&mac)),
                Method::Delete,
            )?;
            if json {
                print_json(&json!({ "removed": mac }));
            } else {
                println!("removed {mac}");
            }
        }
    }
    Ok(())
}

/// `drover group ...`
pub(crate) fn group(cmd: GroupCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        GroupCommand::Add { name, server } => {
            let g = call(
                &server,
                "/groups",
                Method::post(&proto::api::NewGroup { name: name.clone() })?,
            )?;
            if json {
                print_json(&g);
            } else {
                println!("added group {name}");
            }
        }
        GroupCommand::List { server } => {
            let all = call(&server, "/groups", Method::Get)?;
            if json {
                print_json(&all);
            } else {
                let list: Vec<proto::api::Group> = typed(&all)?;
                if list.is_empty() {
                    println!("no groups");
                }
                for g in &list {
                    println!(
                        "{:<20}  {} machine(s){}{}",
                        g.name,
                        g.machines,
                        vars_text(&g.vars),
                        boot_text(g)
                    );
                }
            }
        }
        GroupCommand::Rm { name, server } => {
            call(
                &server,
                &format!("/groups/{}", urlencode(&name)),
                Method::Delete,
            )?;
            if json {
                print_json(&json!({ "removed": name }));
            } else {
                println!("removed group {name}");
            }
        }
        GroupCommand::Set {
            name,
            vars,
            keep_network_first,
            uefi_loader,
            layout,
            server,
        } => {
            let vars = vars.patch();
            let keep_network_first = keep_network_first.map(|k| k == "on");
            let uefi_loader = uefi_loader.map(|l| (l != "default").then_some(l));
            if vars.is_none()
                && keep_network_first.is_none()
                && uefi_loader.is_none()
                && layout.is_none()
            {
                bail!(
                    "nothing to change: give --var KEY=VALUE, --unset-var KEY, \
                     --keep-network-first on|off, --uefi-loader shim|ipxe|default or \
                     --layout grow|keep|proportional"
                );
            }
            let g = call(
                &server,
                &format!("/groups/{}", urlencode(&name)),
                Method::Patch(serde_json::to_value(proto::api::GroupPatch {
                    vars,
                    keep_network_first,
                    uefi_loader,
                    // grow is what a group without a layout does: stored as none.
                    layout: layout.map(|l| (l != proto::api::Layout::Grow).then_some(l)),
                })?),
            )?;
            if json {
                print_json(&g);
            } else {
                let g: proto::api::Group = typed(&g)?;
                println!(
                    "changed group {}{}{}",
                    g.name,
                    vars_text(&g.vars),
                    boot_text(&g)
                );
            }
        }
    }
    Ok(())
}

/// A group's UEFI boot settings that differ from the defaults.
fn boot_text(g: &proto::api::Group) -> String {
    let mut t = String::new();
    if g.keep_network_first {
        t.push_str("  (UEFI: network boot first)");
    }
    if let Some(l) = &g.uefi_loader {
        t.push_str(&format!("  (UEFI loader: {l})"));
    }
    if let Some(l) = g.layout {
        t.push_str(&format!("  (layout: {l})"));
    }
    t
}

/// Variables as `  KEY=VALUE ...` (nothing when there are none).
fn vars_text(v: &proto::template::Vars) -> String {
    v.iter().map(|(k, x)| format!("  {k}={x}")).collect()
}

/// Percent-encodes a path segment or query value.
pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding() {
        assert_eq!(urlencode("lab 2/a"), "lab%202%2Fa");
        assert_eq!(urlencode("aa:bb"), "aa:bb");
    }
}
