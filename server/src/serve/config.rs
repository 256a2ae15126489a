//! The daemon's settings: built-in defaults, overridden by a TOML file (`--config`), overridden
//! by flags and their environment variables. `deploy/drover.example.toml` documents every
//! setting; a test parses it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::serve::schedules::service as schedule;
use transport::net::{self, Iface};

/// Default HTTP listening address.
pub(crate) const DEFAULT_HTTP: &str = "0.0.0.0:8080";

/// The TOML file, every key optional.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    /// Data directory (images, the SQLite database).
    pub(crate) data_dir: Option<PathBuf>,
    /// HTTP listening address.
    pub(crate) http: Option<SocketAddr>,
    /// Interface for multicast and wake-on-LAN.
    pub(crate) iface: Option<String>,
    /// Address put in boot scripts, torrents and agent tasks.
    pub(crate) public_url: Option<String>,
    /// `sqlite://...` or `postgres://...`.
    pub(crate) database_url: Option<String>,
    /// UDP port of wake-on-LAN packets.
    pub(crate) wol_port: Option<u16>,
    /// Highest multicast send rate, bits/s with K/M/G suffixes (e.g. "900M").
    pub(crate) multicast_rate: Option<String>,
    /// Bytes of a multicast stream in flight at most (e.g. "32M").
    pub(crate) multicast_window: Option<String>,
    /// How long before its due time a scheduled redeploy wakes its machines (e.g. "5m").
    pub(crate) wake_lead: Option<String>,
    /// A scheduled run missed by less than this is run late, else recorded as missed.
    pub(crate) schedule_grace: Option<String>,
    /// The boot directory (iPXE binaries, kernel, initramfs).
    pub(crate) boot_dir: Option<PathBuf>,
    /// TFTP: `ADDR:PORT` to serve the boot directory on, or `off`.
    pub(crate) tftp: Option<String>,
    /// `proxy`, `full` or `off`.
    pub(crate) dhcp: Option<String>,
    /// Full DHCP's range, `FIRST-LAST`.
    pub(crate) dhcp_range: Option<String>,
    /// Full DHCP's default gateway.
    pub(crate) dhcp_router: Option<Ipv4Addr>,
    /// Unknown machines that PXE-boot run the agent once to register themselves.
    pub(crate) register_unknown: Option<bool>,
    /// The agent kernel's command line, before drover's own arguments.
    pub(crate) boot_args: Option<String>,
    /// BitTorrent: `ADDR:PORT` the server's seed listens on.
    pub(crate) bittorrent: Option<SocketAddr>,
    /// The server's BitTorrent upload limit, bits/s ("0": the server does not seed).
    pub(crate) bittorrent_upload_rate: Option<String>,
    /// Each agent's BitTorrent upload limit, bits/s.
    pub(crate) bittorrent_agent_upload_rate: Option<String>,
    /// Peers each agent trades with at most.
    pub(crate) bittorrent_agent_peers: Option<usize>,
    /// Machines the server's seed uploads to at once.
    pub(crate) bittorrent_server_peers: Option<usize>,
    /// HTTPS listening address for the dashboard and the API (with `tls_cert` and
    /// `tls_key`).
    pub(crate) https: Option<SocketAddr>,
    /// PEM certificate chain for HTTPS.
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    pub(crate) tls_key: Option<PathBuf>,
    /// Networks reached through a router (a DHCP relay) whose machines may claim their own
    /// MAC to receive their task's token (CIDR, e.g. "10.1.0.0/16"). Machines on the
    /// server's own links are checked by its neighbour table instead. None by default.
    pub(crate) agent_networks: Option<Vec<ipnet::IpNet>>,
}

impl FileConfig {
    /// Reads and checks a config file.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in the config file {}", path.display()))
    }

    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }
}

/// What the daemon runs with.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) data_dir: PathBuf,
    pub(crate) http: SocketAddr,
    /// `None`: no interface (multicast and wake-on-LAN are off until one is given).
    pub(crate) iface: Option<Iface>,
    /// Why there is no interface, for the startup message.
    pub(crate) iface_problem: Option<String>,
    pub(crate) public_url: String,
    pub(crate) database_url: String,
    pub(crate) wol_port: u16,
    /// Highest multicast send rate of a deployment, bits/s.
    pub(crate) multicast_rate: u64,
    /// Bytes of a deployment's stream in flight at most.
    pub(crate) multicast_window: u64,
    /// Default wake lead of scheduled redeploys.
    pub(crate) wake_lead: std::time::Duration,
    /// Grace period of missed scheduled runs.
    pub(crate) schedule_grace: std::time::Duration,
    pub(crate) boot_dir: PathBuf,
    /// Where TFTP listens, if it runs.
    pub(crate) tftp: Option<SocketAddr>,
    /// `proxy`, `full` or `off`.
    pub(crate) dhcp: String,
    /// Full DHCP's pool (with `--dhcp full`).
    pub(crate) dhcp_pool: Option<pxe::dhcp_full::Pool>,
    pub(crate) register_unknown: bool,
    pub(crate) boot_args: String,
    /// The BitTorrent seed's address, and whether the admin chose it.
    pub(crate) bittorrent: (SocketAddr, bool),
    /// Upload limits, bits/s: the server's (Some(0): no seeding) and each agent's.
    pub(crate) bittorrent_upload_rate: Option<u64>,
    pub(crate) bittorrent_agent_upload_rate: Option<u64>,
    pub(crate) bittorrent_agent_peers: usize,
    pub(crate) bittorrent_server_peers: usize,
    /// HTTPS beside HTTP, when a certificate and key are given.
    pub(crate) tls: Option<Tls>,
    /// Routed networks whose machines are trusted to name their own MAC.
    pub(crate) agent_networks: Vec<ipnet::IpNet>,
}

/// HTTPS: where it listens and with what certificate.
#[derive(Debug, Clone)]
pub(crate) struct Tls {
    pub(crate) https: SocketAddr,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// Default HTTPS listening address (with a certificate given).
pub(crate) const DEFAULT_HTTPS: &str = "0.0.0.0:8443";

/// The agent kernel's default arguments: messages on the first serial port and the screen
/// (the agent writes to every active console).
pub(crate) const DEFAULT_BOOT_ARGS: &str = "console=ttyS0,115200n8 console=tty0 quiet panic=10";

/// Default multicast window: what a receiver may hold undecoded.
pub(crate) const DEFAULT_MULTICAST_WINDOW: u64 = 32 << 20;

/// Default multicast rate: most of a gigabit link.
pub(crate) const DEFAULT_MULTICAST_RATE: u64 = 900_000_000;

/// Settings given on the command line (or by environment), each overriding the file.
#[derive(Debug, Default)]
pub(crate) struct Overrides {
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) http: Option<SocketAddr>,
    pub(crate) iface: Option<String>,
    pub(crate) public_url: Option<String>,
    pub(crate) database_url: Option<String>,
    pub(crate) multicast_rate: Option<u64>,
    pub(crate) multicast_window: Option<u64>,
    pub(crate) boot_dir: Option<PathBuf>,
    pub(crate) tftp: Option<String>,
    pub(crate) dhcp: Option<String>,
    pub(crate) dhcp_range: Option<String>,
    pub(crate) dhcp_router: Option<Ipv4Addr>,
    pub(crate) register_unknown: Option<bool>,
    pub(crate) bittorrent: Option<SocketAddr>,
    pub(crate) bittorrent_upload_rate: Option<u64>,
    pub(crate) bittorrent_server_peers: Option<usize>,
    pub(crate) https: Option<SocketAddr>,
    pub(crate) tls_cert: Option<PathBuf>,
    pub(crate) tls_key: Option<PathBuf>,
}

/// Peers each agent trades with at most, by default: few. Agents take pieces in the same
/// (disk) order, so with every machine connected to every other the first machine to hold a
/// piece uploads it to all of them (a star around one machine's upload); six connections each
/// make a mesh in which a piece travels a few hops and every machine uploads about what it
/// downloads. Measured at 40 machines (bench/README.md): 40 peers 62 s, 10 peers 40 s,
/// 6 peers 33-35 s, 4 peers 35 s.
pub(crate) const DEFAULT_AGENT_PEERS: usize = 6;

/// Machines the server's seed uploads to at once, by default: one, so each piece leaves the
/// server about once and the machines pass it on (agents take pieces in disk order: a second
/// machine on the server's link would fetch the same pieces at half the rate). Machines turned
/// away join again when the swarm gives them nothing, so one that leaves frees the place.
pub(crate) const DEFAULT_SERVER_PEERS: usize = 1;

impl Config {
    /// Merges defaults, the file and the overrides, and looks up the interface.
    pub(crate) fn resolve(file: FileConfig, o: Overrides) -> anyhow::Result<Self> {
        let data_dir = o
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from(crate::DEFAULT_DATA_DIR));
        let http = o
            .http
            .or(file.http)
            .unwrap_or_else(|| DEFAULT_HTTP.parse().expect("valid default"));
        let (iface, iface_problem) = match o.iface.or(file.iface) {
            Some(name) => (Some(net::iface(Some(&name))?), None),
            None => match default_route_iface() {
                Ok(i) => (Some(i), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            },
        };
        let public_url = match o.public_url.or(file.public_url) {
            Some(u) => {
                anyhow::ensure!(
                    u.starts_with("http://") || u.starts_with("https://"),
                    "public URL {u:?} must start with http:// or https://"
                );
                u.trim_end_matches('/').to_string()
            }
            None => {
                let host = match (&iface, http.ip()) {
                    (_, ip) if !ip.is_unspecified() => ip.to_string(),
                    (Some(i), _) => i.addr.to_string(),
                    (None, _) => Ipv4Addr::LOCALHOST.to_string(),
                };
                format!("http://{host}:{}", http.port())
            }
        };
        let database_url = o.database_url.or(file.database_url).unwrap_or_else(|| {
            format!("sqlite://{}?mode=rwc", data_dir.join("drover.db").display())
        });
        let dhcp_pool = match (o.dhcp_range.or(file.dhcp_range), &iface) {
            (Some(r), Some(i)) => Some(pool(&r, i, o.dhcp_router.or(file.dhcp_router))?),
            (Some(r), None) => anyhow::bail!("dhcp_range {r:?}: no lab interface to serve it on"),
            (None, _) => None,
        };
        let boot_dir = o
            .boot_dir
            .or(file.boot_dir)
            .unwrap_or_else(|| data_dir.join("boot"));
        Ok(Self {
            data_dir,
            http,
            iface,
            iface_problem,
            public_url,
            database_url,
            wol_port: file.wol_port.unwrap_or(pxe::wol::DEFAULT_PORT),
            multicast_rate: match (o.multicast_rate, &file.multicast_rate) {
                (Some(r), _) => r,
                (None, Some(s)) => transport::fmt::parse_rate(s)
                    .map_err(|e| anyhow::anyhow!("multicast_rate: {e}"))?,
                (None, None) => DEFAULT_MULTICAST_RATE,
            },
            multicast_window: match (o.multicast_window, &file.multicast_window) {
                (Some(w), _) => w,
                (None, Some(s)) => transport::fmt::parse_size(s)
                    .map_err(|e| anyhow::anyhow!("multicast_window: {e}"))?,
                (None, None) => DEFAULT_MULTICAST_WINDOW,
            }
            .max(8 << 20),
            wake_lead: duration("wake_lead", &file.wake_lead, schedule::DEFAULT_WAKE_LEAD)?,
            schedule_grace: duration(
                "schedule_grace",
                &file.schedule_grace,
                schedule::DEFAULT_GRACE,
            )?,
            boot_dir,
            tftp: match o.tftp.or(file.tftp).as_deref() {
                None | Some("off") => None,
                Some(a) => Some(a.parse().map_err(|_| {
                    anyhow::anyhow!("tftp {a:?}: ADDR:PORT (e.g. 0.0.0.0:69) or off")
                })?),
            },
            dhcp: match o.dhcp.or(file.dhcp).as_deref() {
                None | Some("off") => "off".into(),
                Some(d @ ("proxy" | "full")) => d.into(),
                Some(d) => anyhow::bail!("dhcp {d:?}: proxy, full or off"),
            },
            dhcp_pool,
            register_unknown: o
                .register_unknown
                .or(file.register_unknown)
                .unwrap_or(false),
            boot_args: match file.boot_args {
                Some(a) if a.chars().any(char::is_control) => {
                    anyhow::bail!("boot_args {a:?}: one line of kernel arguments")
                }
                Some(a) => a,
                None => DEFAULT_BOOT_ARGS.into(),
            },
            bittorrent: match o.bittorrent.or(file.bittorrent) {
                Some(a) => (a, true),
                None => (
                    SocketAddr::from((
                        Ipv4Addr::UNSPECIFIED,
                        crate::serve::swarm::seeder::DEFAULT_PORT,
                    )),
                    false,
                ),
            },
            bittorrent_upload_rate: match o.bittorrent_upload_rate {
                Some(r) => Some(r),
                None => rate("bittorrent_upload_rate", &file.bittorrent_upload_rate)?,
            },
            bittorrent_agent_upload_rate: match rate(
                "bittorrent_agent_upload_rate",
                &file.bittorrent_agent_upload_rate,
            )? {
                Some(0) => anyhow::bail!(
                    "bittorrent_agent_upload_rate: agents that upload nothing make no swarm \
                     (use the unicast transport instead)"
                ),
                r => r,
            },
            bittorrent_agent_peers: match file.bittorrent_agent_peers {
                Some(0) => anyhow::bail!("bittorrent_agent_peers: at least 1"),
                Some(n) => n,
                None => DEFAULT_AGENT_PEERS,
            },
            bittorrent_server_peers: match o
                .bittorrent_server_peers
                .or(file.bittorrent_server_peers)
            {
                Some(0) => anyhow::bail!(
                    "bittorrent_server_peers: at least 1 (bittorrent_upload_rate = \"0\" turns \
                     the seed off)"
                ),
                Some(n) => n,
                None => DEFAULT_SERVER_PEERS,
            },
            tls: match (
                o.tls_cert.or(file.tls_cert),
                o.tls_key.or(file.tls_key),
                o.https.or(file.https),
            ) {
                (Some(cert), Some(key), https) => Some(Tls {
                    https: https.unwrap_or_else(|| DEFAULT_HTTPS.parse().expect("valid default")),
                    cert,
                    key,
                }),
                (None, None, None) => None,
                (None, None, Some(a)) => {
                    anyhow::bail!("https {a}: give tls_cert and tls_key (PEM files) too")
                }
                _ => anyhow::bail!("tls_cert and tls_key go together: give both"),
            },
            agent_networks: file.agent_networks.unwrap_or_default(),
        })
    }
}

/// Full DHCP's pool from `FIRST-LAST` on the interface's subnet; an hour's leases.
fn pool(
    range: &str,
    iface: &Iface,
    router: Option<Ipv4Addr>,
) -> anyhow::Result<pxe::dhcp_full::Pool> {
    let bad = || anyhow::anyhow!("dhcp_range {range:?}: FIRST-LAST, e.g. 10.0.0.100-10.0.0.199");
    let (a, b) = range.split_once('-').ok_or_else(bad)?;
    let p = pxe::dhcp_full::Pool {
        first: a.trim().parse().map_err(|_| bad())?,
        last: b.trim().parse().map_err(|_| bad())?,
        netmask: Ipv4Addr::from(if iface.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - iface.prefix)
        }),
        router,
        dns: Vec::new(),
        lease_secs: 3600,
    };
    p.check(iface.addr).map_err(anyhow::Error::msg)?;
    Ok(p)
}

/// A rate setting in bits/s ("900M"; "0" or "off": none), if set.
fn rate(key: &str, v: &Option<String>) -> anyhow::Result<Option<u64>> {
    v.as_deref()
        .map(|s| parse_upload_rate(s).map_err(|e| anyhow::anyhow!("{key}: {e}")))
        .transpose()
}

/// An upload rate: bits/s ("300M"), or "0"/"off" for no upload.
pub(crate) fn parse_upload_rate(s: &str) -> Result<u64, String> {
    match s.trim() {
        "0" | "off" => Ok(0),
        t => transport::fmt::parse_rate(t),
    }
}

fn duration(
    key: &str,
    v: &Option<String>,
    default: std::time::Duration,
) -> anyhow::Result<std::time::Duration> {
    v.as_deref().map_or(Ok(default), |s| {
        transport::fmt::parse_duration(s).map_err(|e| anyhow::anyhow!("{key}: {e}"))
    })
}

/// The interface of the IPv4 default route (from `/proc/net/route`).
fn default_route_iface() -> anyhow::Result<Iface> {
    let routes = std::fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    let name = routes
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
        })
        .next()
        .context("no default route: give the lab's interface with --iface")?;
    net::iface(Some(&name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_names_every_setting() {
        let text = include_str!("../../../deploy/drover.example.toml");
        let parsed = FileConfig::parse(text).unwrap();
        // Every key is present in the example (uncommented), so each is documented there;
        // the destructuring fails to compile when a setting is added and not listed here.
        let FileConfig {
            data_dir,
            http,
            iface,
            public_url,
            database_url,
            wol_port,
            multicast_rate,
            multicast_window,
            wake_lead,
            schedule_grace,
            boot_dir,
            tftp,
            dhcp,
            dhcp_range,
            dhcp_router,
            register_unknown,
            boot_args,
            bittorrent,
            bittorrent_upload_rate,
            bittorrent_agent_upload_rate,
            bittorrent_agent_peers,
            bittorrent_server_peers,
            https,
            tls_cert,
            tls_key,
            agent_networks,
        } = &parsed;
        assert!(data_dir.is_some() && http.is_some() && iface.is_some());
        assert!(public_url.is_some() && database_url.is_some() && wol_port.is_some());
        assert!(multicast_rate.is_some() && multicast_window.is_some());
        assert!(wake_lead.is_some() && schedule_grace.is_some());
        assert!(boot_dir.is_some() && tftp.is_some() && dhcp.is_some());
        assert!(dhcp_range.is_some() && dhcp_router.is_some());
        assert!(register_unknown.is_some() && boot_args.is_some());
        assert!(bittorrent.is_some() && bittorrent_upload_rate.is_some());
        assert!(bittorrent_agent_upload_rate.is_some() && bittorrent_agent_peers.is_some());
        assert!(bittorrent_server_peers.is_some());
        assert!(https.is_some() && tls_cert.is_some() && tls_key.is_some());
        assert_eq!(
            agent_networks.as_deref(),
            Some(&["10.1.0.0/16".parse().unwrap()][..])
        );
        // The example's range is for its eth0, not this test's loopback.
        let mut parsed = parsed;
        parsed.dhcp_range = None;
        assert_eq!(
            Config::resolve(
                parsed,
                Overrides {
                    iface: Some("lo".into()),
                    ..Overrides::default()
                }
            )
            .map(|c| (c.multicast_rate, c.wake_lead, c.schedule_grace))
            .unwrap(),
            (
                DEFAULT_MULTICAST_RATE,
                schedule::DEFAULT_WAKE_LEAD,
                schedule::DEFAULT_GRACE
            )
        );
    }

    #[test]
    fn unknown_or_malformed_settings_are_refused() {
        let e = FileConfig::parse("htp = \"0.0.0.0:1\"").unwrap_err();
        assert!(format!("{e:#}").contains("unknown field"), "{e:#}");
        let e = FileConfig::parse("http = \"nowhere\"").unwrap_err();
        assert!(format!("{e:#}").contains("http"), "{e:#}");
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let file = FileConfig::parse("http = \"127.0.0.1:9000\"\ndata_dir = \"/srv/d\"").unwrap();
        let c = Config::resolve(
            file,
            Overrides {
                http: Some("127.0.0.1:9100".parse().unwrap()),
                iface: Some("lo".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.http.port(), 9100);
        assert_eq!(c.data_dir, PathBuf::from("/srv/d"));
        assert_eq!(c.public_url, "http://127.0.0.1:9100");
        assert_eq!(c.database_url, "sqlite:///srv/d/drover.db?mode=rwc");
        assert!(Config::resolve(
            FileConfig::default(),
            Overrides {
                iface: Some("lo".into()),
                public_url: Some("ftp://x".into()),
                ..Overrides::default()
            }
        )
        .is_err());
    }
}
