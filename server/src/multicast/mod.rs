//! `drover multicast send|receive`: one image or file to many machines at once, without the
//! daemon — drover's udp-sender / udp-receiver pair.
//!
//! The sender announces its session on the group (default [`DEFAULT_GROUP`]) every half
//! second; receivers started before or after it hear the announce, fetch the session
//! description over HTTP from the announcing address, register, and count toward
//! `--min-receivers`. The stream is RaptorQ-coded symbols paced at `--rate`; receivers report
//! what they lack, and the sender sends fresh repair symbols. The sender serves late,
//! demoted and lossy receivers the chunks they lack over HTTP while the group goes on.
//!
//! Exit codes: the sender exits 0 once every receiver that joined finished or was declared
//! dead (a dead receiver is reported, not an error) and 1 on an error or when nobody joined;
//! a receiver exits 0 once its output is complete and read back verified, 1 otherwise; both
//! exit 2 on bad usage.

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use proto::{Fec, SenderConfig, SessionKey, StartPolicy};

use transport::{fmt, net, receive, send, session};

use transport::DEFAULT_GROUP;

// Parsed once per run: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub(crate) enum MulticastCommand {
    /// Stream an image (or any file) to every receiver on the network.
    Send {
        /// Image name (newest version), NAME@VERSION or id; or the path of a file or device.
        source: String,
        /// Network interface to send from (default: the only one with an IPv4 address).
        #[arg(long)]
        iface: Option<String>,
        /// Multicast group and port.
        #[arg(long, default_value = DEFAULT_GROUP)]
        group: SocketAddrV4,
        /// Highest send rate in bits per second on the wire (K, M, G suffixes).
        #[arg(long, default_value = "900M", value_parser = fmt::parse_rate)]
        rate: u64,
        /// Start once this many receivers joined (default 1; with --start-at, only the time
        /// starts the stream unless this is given too).
        #[arg(long)]
        min_receivers: Option<usize>,
        /// Start after this long, however many joined (e.g. 30s, 5m).
        #[arg(long, value_parser = fmt::parse_duration)]
        max_wait: Option<Duration>,
        /// Start at this time, however many joined: HH:MM[:SS] (local time, the next one to
        /// come) or RFC 3339 (2026-11-25T18:30:00+01:00).
        #[arg(long, value_parser = parse_start_at)]
        start_at: Option<chrono::DateTime<chrono::Local>>,
        /// Proactive repair symbols per source symbol: a fixed share (e.g. 5% or 0.05), or
        /// `auto`: enough for the lossiest receiver's reported loss, at least 0.5%.
        #[arg(long, default_value = "auto", value_parser = parse_fec)]
        fec_overhead: Fec,
        /// Chunks in flight at most, in bytes (at least two chunks): what a receiver may hold
        /// undecoded, and how far a lossy receiver may fall behind before unicast takes over.
        #[arg(long, default_value = "32M", value_parser = fmt::parse_size)]
        window: u64,
        /// Send to the subnet's broadcast address instead of the group (for switches that
        /// mishandle multicast).
        #[arg(long)]
        broadcast: bool,
        /// Multicast TTL (1: the local network only).
        #[arg(long, default_value_t = 1)]
        ttl: u32,
        /// TCP port of the HTTP service receivers register with (0: any free port).
        #[arg(long, default_value_t = 0)]
        http_port: u16,
        /// Unicast downloads (late, demoted or lossy receivers catching up), all together, while
        /// the stream runs: a share of --rate (e.g. 25%) or a rate (e.g. 100M). After the
        /// stream they get the whole --rate.
        #[arg(long, default_value = "25%")]
        unicast_rate: String,
        /// Receivers whose receive rate stays under this are finished over unicast.
        #[arg(long, value_parser = fmt::parse_rate)]
        min_receiver_rate: Option<u64>,
        /// Receivers losing more than this share of the stream are finished over unicast.
        #[arg(long, default_value = "50%", value_parser = fmt::parse_fraction)]
        max_receiver_loss: f64,
        /// A receiver silent this long is declared dead.
        #[arg(long, default_value = "10s", value_parser = fmt::parse_duration)]
        dead_after: Duration,
        #[command(flatten)]
        store: crate::image_cmd::StoreArgs,
    },
    /// Receive a session into a disk, partition or file.
    Receive {
        /// Network interface to listen on (default: the only one with an IPv4 address).
        #[arg(long)]
        iface: Option<String>,
        /// Multicast group and port to listen on (a broadcast session on the port is heard too).
        #[arg(long, default_value = DEFAULT_GROUP)]
        group: SocketAddrV4,
        /// Where to write: a device (large enough, not in use) or a file (created or resized).
        #[arg(long)]
        out: PathBuf,
        /// Give up when no session is announced within this long (default: wait forever).
        #[arg(long, value_parser = fmt::parse_duration)]
        wait: Option<Duration>,
    },
}

/// Runs a multicast command.
pub(crate) fn run(cmd: MulticastCommand, data_dir: &Path, json: bool) -> anyhow::Result<()> {
    let rt = transport::session_runtime()?;
    match cmd {
        MulticastCommand::Send {
            source,
            iface,
            group,
            rate,
            min_receivers,
            max_wait,
            start_at,
            fec_overhead,
            window,
            broadcast,
            ttl,
            http_port,
            unicast_rate,
            min_receiver_rate,
            max_receiver_loss,
            dead_after,
            store,
        } => {
            let unicast_rate = match unicast_rate.strip_suffix('%') {
                Some(_) => {
                    (rate as f64
                        * fmt::parse_fraction(&unicast_rate).map_err(anyhow::Error::msg)?)
                        as u64
                }
                None => fmt::parse_rate(&unicast_rate).map_err(anyhow::Error::msg)?,
            }
            .max(1_000_000);
            let iface = net::iface(iface.as_deref())?;
            let (source, name) = open_source(&source, store, data_dir)?;
            let mut config = SenderConfig::new(0, SessionKey::new([0; 32]));
            config.rate_bps = rate;
            // Congestion backs the rate off to a tenth at most: below that, the receivers
            // that cannot keep up are better served by unicast than the group by waiting.
            config.min_rate_bps = (rate / 10).max(1_000_000).min(rate);
            config.fec = fec_overhead;
            config.window_bytes = window;
            config.start = StartPolicy {
                min_receivers: match (min_receivers, start_at) {
                    (Some(n), _) => n,
                    (None, Some(_)) => usize::MAX,
                    (None, None) => 1,
                },
                max_wait,
                start_at: start_at.map(|t| {
                    let wait = (t - chrono::Local::now()).to_std().unwrap_or_default();
                    std::time::Instant::now() + wait
                }),
            };
            config.min_receiver_rate_bps = min_receiver_rate.unwrap_or(0);
            config.max_receiver_loss = max_receiver_loss;
            config.dead_after = dead_after;
            let (tx, events) = tokio::sync::mpsc::unbounded_channel();
            let sent = rt.block_on(shown(
                events,
                send::run(send::SendOptions {
                    source,
                    name,
                    iface,
                    group,
                    broadcast,
                    ttl,
                    http_port,
                    unicast_rate,
                    config,
                    hooks: None,
                    events: Some(tx),
                }),
            ))?;
            if json {
                println!("{}", serde_json::to_string(&sent)?);
            } else {
                println!("{sent}");
            }
            anyhow::ensure!(sent.joined, "no receiver joined the session");
            Ok(())
        }
        MulticastCommand::Receive {
            iface,
            group,
            out,
            wait,
        } => {
            let iface = net::iface(iface.as_deref())?;
            let (tx, events) = tokio::sync::mpsc::unbounded_channel();
            let r = rt.block_on(shown(
                events,
                receive::run(receive::ReceiveOptions {
                    leave_missing: false,
                    iface,
                    group,
                    out: receive::Out::Path {
                        path: out.clone(),
                        resume: false,
                    },
                    wait,
                    session: None,
                    fetch_from: None,
                    events: Some(tx),
                }),
            ))?;
            print_received(&r, &out, json);
            Ok(())
        }
    }
}

/// Runs `work` while printing the events it tells, each on its own line; the last ones are
/// printed before it returns (the sender of `events` ends with `work`).
async fn shown<E: std::fmt::Display + Send + 'static, T>(
    mut events: tokio::sync::mpsc::UnboundedReceiver<E>,
    work: impl std::future::Future<Output = T>,
) -> T {
    let show = tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            eprintln!("{e}");
        }
    });
    let r = work.await;
    let _ = show.await;
    r
}

/// The receiver's last word: a line, or with `--json` one object.
fn print_received(r: &receive::Received, out: &Path, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "session": format!("{:08x}", r.session),
                "name": r.name,
                "out": out.display().to_string(),
                "bytes": r.bytes,
                "seconds": r.seconds,
                "chunks_multicast": r.multicast_chunks,
                "chunks_unicast": r.unicast_chunks,
                "datagrams": r.datagrams,
                "rejected_datagrams": r.rejected_datagrams,
                "foreign_datagrams": r.foreign_datagrams,
                "demoted": r.demoted,
            })
        );
    } else {
        println!(
            "received {} into {} in {:.1} s, verified: {} chunk(s) by multicast, {} over unicast{}",
            fmt::bytes(r.bytes),
            out.display(),
            r.seconds,
            r.multicast_chunks,
            r.unicast_chunks,
            if r.rejected_datagrams > 0 {
                format!(", {} bad datagram(s) dropped", r.rejected_datagrams)
            } else {
                String::new()
            }
        );
    }
}

/// A path that exists is a file session; anything else names an image in the store.
fn open_source(
    arg: &str,
    store: crate::image_cmd::StoreArgs,
    data_dir: &Path,
) -> anyhow::Result<(session::Source, String)> {
    let p = Path::new(arg);
    if p.exists() {
        let name = p
            .file_name()
            .map_or_else(|| arg.to_string(), |n| n.to_string_lossy().into_owned());
        return Ok((session::Source::file(p)?, name));
    }
    let store = crate::image_cmd::open_store(store, data_dir)?;
    let img = store
        .resolve(arg)
        .with_context(|| format!("{arg:?} is neither a file nor an image in the store"))?;
    let name = format!("{}@{}", img.manifest.name, img.manifest.name_version);
    Ok((session::Source::image(store, img.id, img.manifest)?, name))
}

fn parse_fec(s: &str) -> Result<Fec, String> {
    if s == "auto" {
        Ok(Fec::Auto {
            floor: proto::sender::DEFAULT_FEC_OVERHEAD,
        })
    } else {
        fmt::parse_fraction(s).map(Fec::Fixed)
    }
}

/// `HH:MM[:SS]` in local time (today, or tomorrow once past) or an RFC 3339 time.
fn parse_start_at(s: &str) -> Result<chrono::DateTime<chrono::Local>, String> {
    use chrono::{Local, NaiveTime, TimeZone};
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Local));
    }
    let time = NaiveTime::parse_from_str(s, "%H:%M:%S")
        .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M"))
        .map_err(|_| {
            format!(
                "{s:?} is not a time: use HH:MM, HH:MM:SS or RFC 3339 (2026-11-25T18:30:00+01:00)"
            )
        })?;
    let now = Local::now();
    let mut day = now.date_naive();
    loop {
        // A local time that does not exist (a DST gap) takes the next day's.
        if let Some(t) = Local.from_local_datetime(&day.and_time(time)).earliest() {
            if t > now {
                return Ok(t);
            }
        }
        day = day
            .succ_opt()
            .ok_or_else(|| format!("{s:?}: no such time to come"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Timelike;

    #[test]
    fn start_times() {
        let t = parse_start_at("2026-11-25T18:30:00+01:00").unwrap();
        assert_eq!(t.timestamp(), 1_795_627_800);
        let now = chrono::Local::now();
        let t = parse_start_at("07:05").unwrap();
        assert_eq!((t.hour(), t.minute(), t.second()), (7, 5, 0));
        assert!(t > now && t <= now + chrono::Duration::hours(25));
        assert!(parse_start_at("07:05:09").is_ok());
        for bad in ["25:00", "7", "tomorrow", ""] {
            let e = parse_start_at(bad).unwrap_err();
            assert!(e.contains("is not a time"), "{bad}: {e}");
        }
    }
}
