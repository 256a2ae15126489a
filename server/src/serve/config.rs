//! The daemon's settings, declared once ([`Settings`]: each a flag, its environment variable
//! and a key of the TOML file): built-in defaults, overridden by the file (`--config`),
//! overridden by flags. `deploy/drover.example.toml` documents every setting; a test parses
//! it and checks that it names each flag.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::serve::schedules::service as schedule;
use transport::net::{self, Iface};

/// Default HTTP listening address.
pub(crate) const DEFAULT_HTTP: &str = "0.0.0.0:8080";

/// Declares the settings once: each field is a flag (with its environment variable) and a key
/// of the TOML file, and [`Settings::over`] lets one source's values win over another's.
macro_rules! settings {
    ($(#[$sm:meta])* pub(crate) struct $name:ident {
        $($(#[$fm:meta])* pub(crate) $f:ident: Option<$t:ty>,)+
    }) => {
        $(#[$sm])*
        pub(crate) struct $name {
            $($(#[$fm])* pub(crate) $f: Option<$t>,)+
        }

        impl $name {
            /// These settings where set, `lower`'s elsewhere.
            pub(crate) fn over(self, lower: Self) -> Self {
                Self { $($f: self.$f.or(lower.$f),)+ }
            }
        }
    };
}

settings! {
    /// Every setting of `drover serve`: a flag (and its `DROVER_...` variable) and the same key
    /// in the TOML file (`--config`), every one optional. Flags win over the file, which wins
    /// over the defaults ([`Config::resolve`]).
    #[derive(Debug, Default, Clone, PartialEq, clap::Args, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Settings {
        /// Data directory (images, the SQLite database); on the command line, drover's global
        /// --data-dir.
        #[arg(skip)]
        #[serde(default)]
        pub(crate) data_dir: Option<PathBuf>,
        /// HTTP listening address (default 0.0.0.0:8080).
        #[arg(long, env = "DROVER_HTTP")]
        #[serde(default)]
        pub(crate) http: Option<SocketAddr>,
        /// Interface for multicast and wake-on-LAN (default: the default route's).
        #[arg(long, env = "DROVER_IFACE")]
        #[serde(default)]
        pub(crate) iface: Option<String>,
        /// The URL machines reach this server at, put in boot scripts, torrents and tasks
        /// (default: the interface's address and the HTTP port).
        #[arg(long, env = "DROVER_PUBLIC_URL")]
        #[serde(default)]
        pub(crate) public_url: Option<String>,
        /// sqlite://FILE or postgres://USER:PASSWORD@HOST/DB (default: DATA_DIR/drover.db).
        #[arg(long, env = "DROVER_DATABASE_URL")]
        #[serde(default)]
        pub(crate) database_url: Option<String>,
        /// The image store: a directory (default: DATA_DIR/images), s3://BUCKET/PREFIX,
        /// webdav[s]://HOST[:PORT]/PATH or sftp://[USER@]HOST[:PORT]/PATH. Servers sharing one
        /// database share one store.
        #[arg(long, env = "DROVER_STORE")]
        #[serde(default)]
        pub(crate) store: Option<String>,
        /// The S3 service's URL for an s3:// store (default: $AWS_ENDPOINT_URL, else AWS).
        #[arg(long, env = "DROVER_S3_ENDPOINT")]
        #[serde(default)]
        pub(crate) s3_endpoint: Option<String>,
        /// The S3 region (default: $AWS_REGION, else us-east-1).
        #[arg(long, env = "DROVER_S3_REGION")]
        #[serde(default)]
        pub(crate) s3_region: Option<String>,
        /// The S3 access key id (default: $AWS_ACCESS_KEY_ID).
        #[arg(long, env = "DROVER_S3_ACCESS_KEY_ID")]
        #[serde(default)]
        pub(crate) s3_access_key_id: Option<String>,
        /// The S3 secret key (default: $AWS_SECRET_ACCESS_KEY; prefer the variable or the
        /// file to a flag, which other users can read in the process list).
        #[arg(long, env = "DROVER_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
        #[serde(default)]
        pub(crate) s3_secret_access_key: Option<String>,
        /// Local cache of an object store's chunks, in DATA_DIR/cache: each chunk is read from
        /// the store once, least recently used out (K, M, G; default 20G; 0 for none).
        #[arg(long, env = "DROVER_CACHE_SIZE", value_parser = transport::fmt::parse_size)]
        #[serde(default, deserialize_with = "de::size")]
        pub(crate) cache_size: Option<u64>,
        /// The store's key, a file of 64 hex digits (`drover image keygen FILE`): chunks and
        /// manifests are AES-256-GCM encrypted at rest.
        #[arg(long, env = "DROVER_ENCRYPT_KEY_FILE")]
        #[serde(default)]
        pub(crate) encrypt_key_file: Option<PathBuf>,
        /// The store's key as a passphrase (the file's first line), through Argon2id.
        #[arg(long, env = "DROVER_ENCRYPT_PASSPHRASE_FILE")]
        #[serde(default)]
        pub(crate) encrypt_passphrase_file: Option<PathBuf>,
        /// UDP port of wake-on-LAN packets (default 9).
        #[arg(long, env = "DROVER_WOL_PORT")]
        #[serde(default)]
        pub(crate) wol_port: Option<u16>,
        /// Highest multicast send rate of a deployment, bits/s (K, M, G suffixes; default
        /// 900M).
        #[arg(long, env = "DROVER_MULTICAST_RATE", value_parser = transport::fmt::parse_rate)]
        #[serde(default, deserialize_with = "de::rate")]
        pub(crate) multicast_rate: Option<u64>,
        /// Bytes of a deployment's stream in flight at most (K, M, G; default 32M, at least 8M).
        #[arg(long, env = "DROVER_MULTICAST_WINDOW", value_parser = transport::fmt::parse_size)]
        #[serde(default, deserialize_with = "de::size")]
        pub(crate) multicast_window: Option<u64>,
        /// How long before its due time a scheduled redeploy wakes its machines (default 5m).
        #[arg(long, env = "DROVER_WAKE_LEAD", value_parser = transport::fmt::parse_duration)]
        #[serde(default, deserialize_with = "de::duration")]
        pub(crate) wake_lead: Option<Duration>,
        /// A scheduled run missed by less than this is run late, else recorded as missed
        /// (default 1h).
        #[arg(long, env = "DROVER_SCHEDULE_GRACE", value_parser = transport::fmt::parse_duration)]
        #[serde(default, deserialize_with = "de::duration")]
        pub(crate) schedule_grace: Option<Duration>,
        /// The boot directory: iPXE binaries, kernel, initramfs (default: DATA_DIR/boot).
        #[arg(long, env = "DROVER_BOOT_DIR")]
        #[serde(default)]
        pub(crate) boot_dir: Option<PathBuf>,
        /// Serve the boot directory over TFTP on ADDR:PORT, or off (default: 0.0.0.0:69 when
        /// --dhcp answers PXE clients, whose firmware fetches its first file by TFTP; else off).
        #[arg(long, env = "DROVER_TFTP")]
        #[serde(default)]
        pub(crate) tftp: Option<String>,
        /// Answer PXE clients: proxy (boot information only, beside the lab's DHCP server),
        /// full (addresses too, for an isolated lab; needs --dhcp-range) or off (default).
        #[arg(long, env = "DROVER_DHCP", value_parser = ["proxy", "full", "off"])]
        #[serde(default)]
        pub(crate) dhcp: Option<String>,
        /// Full DHCP's address range, FIRST-LAST (in the lab interface's subnet).
        #[arg(long, env = "DROVER_DHCP_RANGE")]
        #[serde(default)]
        pub(crate) dhcp_range: Option<String>,
        /// Full DHCP's default gateway for the machines (default: none).
        #[arg(long, env = "DROVER_DHCP_ROUTER")]
        #[serde(default)]
        pub(crate) dhcp_router: Option<Ipv4Addr>,
        /// Unknown machines that PXE-boot run the agent once to register themselves (FOG's
        /// quick registration); without it they boot their local disk.
        #[arg(
            long,
            env = "DROVER_REGISTER_UNKNOWN",
            num_args = 0..=1,
            default_missing_value = "true",
            value_parser = clap::builder::BoolishValueParser::new()
        )]
        #[serde(default)]
        pub(crate) register_unknown: Option<bool>,
        /// What UEFI x64 machines start from the network: shim (default: the Secure Boot
        /// chain, Microsoft-signed shim, Debian-signed GRUB and kernel) or ipxe (iPXE's
        /// snponly.efi; Secure Boot off). A group's own choice wins for its machines.
        #[arg(long, env = "DROVER_UEFI_LOADER")]
        #[serde(default)]
        pub(crate) uefi_loader: Option<String>,
        /// The agent kernel's command line, before drover's own arguments (default: messages
        /// on the first serial port and the screen).
        #[arg(long, env = "DROVER_BOOT_ARGS", allow_hyphen_values = true)]
        #[serde(default)]
        pub(crate) boot_args: Option<String>,
        /// ADDR:PORT the BitTorrent seed listens on (default 0.0.0.0:6881).
        #[arg(long, env = "DROVER_BITTORRENT")]
        #[serde(default)]
        pub(crate) bittorrent: Option<SocketAddr>,
        /// The server's BitTorrent upload limit, bits/s (K, M, G; 0: the server does not seed;
        /// default: none).
        #[arg(long, env = "DROVER_BITTORRENT_UPLOAD_RATE", value_parser = parse_upload_rate)]
        #[serde(default, deserialize_with = "de::upload_rate")]
        pub(crate) bittorrent_upload_rate: Option<u64>,
        /// Each agent's BitTorrent upload limit, bits/s (default: none).
        #[arg(long, env = "DROVER_BITTORRENT_AGENT_UPLOAD_RATE", value_parser = parse_upload_rate)]
        #[serde(default, deserialize_with = "de::upload_rate")]
        pub(crate) bittorrent_agent_upload_rate: Option<u64>,
        /// Peers each agent trades with at most (default 6).
        #[arg(long, env = "DROVER_BITTORRENT_AGENT_PEERS")]
        #[serde(default)]
        pub(crate) bittorrent_agent_peers: Option<usize>,
        /// Machines the server's seed uploads to at once (default 1).
        #[arg(long, env = "DROVER_BITTORRENT_SERVER_PEERS")]
        #[serde(default)]
        pub(crate) bittorrent_server_peers: Option<usize>,
        /// HTTPS listening address for the dashboard and the API (default 0.0.0.0:8443; with
        /// --tls-cert).
        #[arg(long, env = "DROVER_HTTPS")]
        #[serde(default)]
        pub(crate) https: Option<SocketAddr>,
        /// PEM certificate chain: the dashboard and the API are served over HTTPS too (boot
        /// files and agents stay on HTTP).
        #[arg(long, env = "DROVER_TLS_CERT", requires = "tls_key")]
        #[serde(default)]
        pub(crate) tls_cert: Option<PathBuf>,
        /// PEM private key for --tls-cert.
        #[arg(long, env = "DROVER_TLS_KEY", requires = "tls_cert")]
        #[serde(default)]
        pub(crate) tls_key: Option<PathBuf>,
        /// Networks reached through a router (a DHCP relay) whose machines may claim their own
        /// MAC to receive their task's token (CIDR, comma-separated, e.g. 10.1.0.0/16).
        /// Machines on the server's own links are checked by its neighbour table instead.
        /// None by default.
        #[arg(long, env = "DROVER_AGENT_NETWORKS", value_delimiter = ',')]
        #[serde(default)]
        pub(crate) agent_networks: Option<Vec<ipnet::IpNet>>,
    }
}

/// The file's values that are written as text with units ("900M", "5m", "off").
mod de {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    fn parsed<'de, D: Deserializer<'de>, T>(
        d: D,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map(Some).map_err(serde::de::Error::custom)
    }

    pub(super) fn rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        parsed(d, transport::fmt::parse_rate)
    }

    pub(super) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        parsed(d, transport::fmt::parse_size)
    }

    pub(super) fn upload_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        parsed(d, super::parse_upload_rate)
    }

    pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        parsed(d, transport::fmt::parse_duration)
    }
}

impl Settings {
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
    /// The store's URL or directory (`None`: DATA_DIR/images).
    pub(crate) store: Option<String>,
    /// How to reach an object store.
    pub(crate) store_options: stores::Options,
    pub(crate) wol_port: u16,
    /// Highest multicast send rate of a deployment, bits/s.
    pub(crate) multicast_rate: u64,
    /// Bytes of a deployment's stream in flight at most.
    pub(crate) multicast_window: u64,
    /// Default wake lead of scheduled redeploys.
    pub(crate) wake_lead: Duration,
    /// Grace period of missed scheduled runs.
    pub(crate) schedule_grace: Duration,
    pub(crate) boot_dir: PathBuf,
    /// Where TFTP listens, if it runs.
    pub(crate) tftp: Option<SocketAddr>,
    /// `proxy`, `full` or `off`.
    pub(crate) dhcp: String,
    /// Full DHCP's pool (with `--dhcp full`).
    pub(crate) dhcp_pool: Option<pxe::dhcp_full::Pool>,
    pub(crate) register_unknown: bool,
    /// What UEFI x64 machines start, unless their group says.
    pub(crate) uefi_loader: pxe::dhcp::UefiLoader,
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

/// The default size of an object store's local chunk cache.
pub(crate) const DEFAULT_CACHE_SIZE: u64 = 20 << 30;

/// Where TFTP listens when DHCP answers PXE clients and no --tftp is given.
pub(crate) const DEFAULT_TFTP: &str = "0.0.0.0:69";

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
    /// The settings (the flags' over the file's) with defaults where unset, checked, and the
    /// interface looked up.
    pub(crate) fn resolve(s: Settings) -> anyhow::Result<Self> {
        let data_dir = s
            .data_dir
            .unwrap_or_else(|| PathBuf::from(crate::DEFAULT_DATA_DIR));
        let http = s
            .http
            .unwrap_or_else(|| DEFAULT_HTTP.parse().expect("valid default"));
        let (iface, iface_problem) = match s.iface {
            Some(name) => (Some(net::iface(Some(&name))?), None),
            None => match default_route_iface() {
                Ok(i) => (Some(i), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            },
        };
        let public_url = match s.public_url {
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
        let database_url = s.database_url.unwrap_or_else(|| {
            format!("sqlite://{}?mode=rwc", data_dir.join("drover.db").display())
        });
        let dhcp_pool = match (s.dhcp_range, &iface) {
            (Some(r), Some(i)) => Some(pool(&r, i, s.dhcp_router)?),
            (Some(r), None) => anyhow::bail!("dhcp_range {r:?}: no lab interface to serve it on"),
            (None, _) => None,
        };
        let boot_dir = s.boot_dir.unwrap_or_else(|| data_dir.join("boot"));
        let cache = match s.cache_size.unwrap_or(DEFAULT_CACHE_SIZE) {
            0 => None,
            n => Some((data_dir.join("cache"), n)),
        };
        Ok(Self {
            data_dir,
            http,
            iface,
            iface_problem,
            public_url,
            database_url,
            store: s.store,
            store_options: stores::Options {
                s3_endpoint: s.s3_endpoint,
                s3_region: s.s3_region,
                s3_access_key_id: s.s3_access_key_id,
                s3_secret_access_key: s.s3_secret_access_key,
                secret: crate::image_cmd::secret(
                    s.encrypt_key_file.as_deref(),
                    s.encrypt_passphrase_file.as_deref(),
                )?,
                cache,
                ..Default::default()
            }
            .with_env(),
            wol_port: s.wol_port.unwrap_or(pxe::wol::DEFAULT_PORT),
            multicast_rate: s.multicast_rate.unwrap_or(DEFAULT_MULTICAST_RATE),
            multicast_window: s
                .multicast_window
                .unwrap_or(DEFAULT_MULTICAST_WINDOW)
                .max(8 << 20),
            wake_lead: s.wake_lead.unwrap_or(schedule::DEFAULT_WAKE_LEAD),
            schedule_grace: s.schedule_grace.unwrap_or(schedule::DEFAULT_GRACE),
            boot_dir,
            tftp: match s.tftp.as_deref() {
                // Firmware PXE fetches its first file by TFTP: answering PXE clients without
                // it sends them a file name they cannot load (PXE-E99).
                None if matches!(s.dhcp.as_deref(), Some("proxy" | "full")) => {
                    Some(DEFAULT_TFTP.parse().expect("valid default"))
                }
                None | Some("off") => None,
                Some(a) => Some(a.parse().map_err(|_| {
                    anyhow::anyhow!("tftp {a:?}: ADDR:PORT (e.g. 0.0.0.0:69) or off")
                })?),
            },
            dhcp: match s.dhcp.as_deref() {
                None | Some("off") => "off".into(),
                Some(d @ ("proxy" | "full")) => d.into(),
                Some(d) => anyhow::bail!("dhcp {d:?}: proxy, full or off"),
            },
            dhcp_pool,
            register_unknown: s.register_unknown.unwrap_or(false),
            uefi_loader: match s.uefi_loader.as_deref() {
                None => pxe::dhcp::UefiLoader::default(),
                Some(l) => pxe::dhcp::UefiLoader::parse(l).map_err(anyhow::Error::msg)?,
            },
            boot_args: match s.boot_args {
                Some(a) if a.chars().any(char::is_control) => {
                    anyhow::bail!("boot_args {a:?}: one line of kernel arguments")
                }
                Some(a) => a,
                None => DEFAULT_BOOT_ARGS.into(),
            },
            bittorrent: match s.bittorrent {
                Some(a) => (a, true),
                None => (
                    SocketAddr::from((
                        Ipv4Addr::UNSPECIFIED,
                        crate::serve::swarm::seeder::DEFAULT_PORT,
                    )),
                    false,
                ),
            },
            bittorrent_upload_rate: s.bittorrent_upload_rate,
            bittorrent_agent_upload_rate: match s.bittorrent_agent_upload_rate {
                Some(0) => anyhow::bail!(
                    "bittorrent_agent_upload_rate: agents that upload nothing make no swarm \
                     (use the unicast transport instead)"
                ),
                r => r,
            },
            bittorrent_agent_peers: match s.bittorrent_agent_peers {
                Some(0) => anyhow::bail!("bittorrent_agent_peers: at least 1"),
                Some(n) => n,
                None => DEFAULT_AGENT_PEERS,
            },
            bittorrent_server_peers: match s.bittorrent_server_peers {
                Some(0) => anyhow::bail!(
                    "bittorrent_server_peers: at least 1 (bittorrent_upload_rate = \"0\" turns \
                     the seed off)"
                ),
                Some(n) => n,
                None => DEFAULT_SERVER_PEERS,
            },
            tls: match (s.tls_cert, s.tls_key, s.https) {
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
            agent_networks: s.agent_networks.unwrap_or_default(),
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

/// An upload rate: bits/s ("300M"), or "0"/"off" for no upload.
pub(crate) fn parse_upload_rate(s: &str) -> Result<u64, String> {
    match s.trim() {
        "0" | "off" => Ok(0),
        t => transport::fmt::parse_rate(t),
    }
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
        let parsed = Settings::parse(text).unwrap();
        // Every key is present in the example (uncommented), so each is documented there;
        // the destructuring fails to compile when a setting is added and not listed here.
        let Settings {
            data_dir,
            http,
            iface,
            public_url,
            database_url,
            store,
            s3_endpoint,
            s3_region,
            s3_access_key_id,
            s3_secret_access_key,
            cache_size,
            encrypt_key_file,
            encrypt_passphrase_file,
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
            uefi_loader,
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
        assert!(store.is_some() && s3_endpoint.is_some() && s3_region.is_some());
        assert!(s3_access_key_id.is_some() && s3_secret_access_key.is_some());
        assert!(encrypt_key_file.is_some() && encrypt_passphrase_file.is_some());
        assert!(cache_size.is_some());
        assert!(wake_lead.is_some() && schedule_grace.is_some());
        assert!(boot_dir.is_some() && tftp.is_some() && dhcp.is_some());
        assert!(dhcp_range.is_some() && dhcp_router.is_some());
        assert!(register_unknown.is_some() && boot_args.is_some() && uefi_loader.is_some());
        assert!(bittorrent.is_some() && bittorrent_upload_rate.is_some());
        assert!(bittorrent_agent_upload_rate.is_some() && bittorrent_agent_peers.is_some());
        assert!(bittorrent_server_peers.is_some());
        assert!(https.is_some() && tls_cert.is_some() && tls_key.is_some());
        assert_eq!(
            agent_networks.as_deref(),
            Some(&["10.1.0.0/16".parse().unwrap()][..])
        );
        // Each key's flag is named beside it.
        for key in text
            .lines()
            .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
            .filter(|k| !k.starts_with('#') && *k != "data_dir")
        {
            let flag = format!("--{}", key.replace('_', "-"));
            assert!(text.contains(&flag), "the example does not name {flag}");
        }
        // The example's range is for its eth0, not this test's loopback.
        let mut parsed = parsed;
        parsed.dhcp_range = None;
        // The example names both kinds of key (an admin gives one) and files not here.
        parsed.encrypt_key_file = None;
        parsed.encrypt_passphrase_file = None;
        assert_eq!(
            Config::resolve(Settings {
                iface: Some("lo".into()),
                ..parsed
            })
            .map(|c| (c.multicast_rate, c.wake_lead, c.schedule_grace))
            .unwrap(),
            (
                900_000_000,
                Duration::from_secs(300),
                Duration::from_secs(3600)
            )
        );
    }

    #[test]
    fn tftp_follows_dhcp_unless_turned_off() {
        let with = |dhcp: Option<&str>, tftp: Option<&str>| {
            Config::resolve(Settings {
                iface: Some("lo".into()),
                dhcp: dhcp.map(Into::into),
                tftp: tftp.map(Into::into),
                ..Settings::default()
            })
            .unwrap()
            .tftp
        };
        let default = Some("0.0.0.0:69".parse().unwrap());
        assert_eq!(with(Some("proxy"), None), default);
        assert_eq!(with(Some("full"), None), default);
        assert_eq!(with(Some("proxy"), Some("off")), None);
        assert_eq!(with(None, None), None);
        assert_eq!(with(Some("off"), None), None);
        assert_eq!(
            with(None, Some("10.0.0.1:1069")),
            Some("10.0.0.1:1069".parse().unwrap())
        );
    }

    #[test]
    fn unknown_or_malformed_settings_are_refused() {
        let e = Settings::parse("htp = \"0.0.0.0:1\"").unwrap_err();
        assert!(format!("{e:#}").contains("unknown field"), "{e:#}");
        let e = Settings::parse("http = \"nowhere\"").unwrap_err();
        assert!(format!("{e:#}").contains("http"), "{e:#}");
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let file = Settings::parse("http = \"127.0.0.1:9000\"\ndata_dir = \"/srv/d\"").unwrap();
        let flags = Settings {
            http: Some("127.0.0.1:9100".parse().unwrap()),
            iface: Some("lo".into()),
            ..Settings::default()
        };
        let c = Config::resolve(flags.over(file)).unwrap();
        assert_eq!(c.http.port(), 9100);
        assert_eq!(c.data_dir, PathBuf::from("/srv/d"));
        assert_eq!(c.public_url, "http://127.0.0.1:9100");
        assert_eq!(c.database_url, "sqlite:///srv/d/drover.db?mode=rwc");
        assert!(Config::resolve(Settings {
            iface: Some("lo".into()),
            public_url: Some("ftp://x".into()),
            ..Settings::default()
        })
        .is_err());
    }

    #[test]
    fn every_setting_is_a_flag_with_its_variable_too() {
        use clap::{CommandFactory, FromArgMatches, Parser};
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            s: Settings,
        }
        let m = Cli::command()
            .try_get_matches_from([
                "drover",
                "--wake-lead",
                "10m",
                "--multicast-rate",
                "500M",
                "--register-unknown",
                "--agent-networks",
                "10.1.0.0/16,10.2.0.0/16",
                "--bittorrent-agent-upload-rate",
                "off",
            ])
            .unwrap();
        let s = Cli::from_arg_matches(&m).unwrap().s;
        assert_eq!(s.wake_lead, Some(Duration::from_secs(600)));
        assert_eq!(s.multicast_rate, Some(500_000_000));
        assert_eq!(s.register_unknown, Some(true));
        assert_eq!(s.agent_networks.as_ref().map(Vec::len), Some(2));
        assert_eq!(s.bittorrent_agent_upload_rate, Some(0));
        // The file's keys are the flags' names; a flag wins over the file.
        let file =
            Settings::parse("wake_lead = \"1m\"\nwol_port = 7\nregister_unknown = false").unwrap();
        let merged = s.over(file);
        assert_eq!(merged.wake_lead, Some(Duration::from_secs(600)));
        assert_eq!(merged.wol_port, Some(7));
        assert_eq!(merged.register_unknown, Some(true));
        let e = Settings::parse("multicast_rate = \"fast\"").unwrap_err();
        assert!(format!("{e:#}").contains("multicast_rate"), "{e:#}");
    }
}
