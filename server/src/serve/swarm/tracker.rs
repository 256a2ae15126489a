//! The server's BitTorrent tracker: `GET /announce` (BEP 3, compact peer lists as in BEP 23),
//! public as trackers are, for the server's own image torrents only (an unknown info hash is
//! refused). Peers are the announcing connection's address and the port it gives; a peer that
//! stops announcing for two intervals is forgotten. The swarm logic is plain data behind a
//! mutex; the handler only parses the query and encodes the answer.

// Compact peers are in network byte order (BEP 23).
#![allow(clippy::big_endian_bytes)]

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use imaging::torrent::{bytes, int};
use transport::swarm::Role;

use crate::serve::web::api::Shared;

/// How often peers announce (lab deployments are minutes long: keep the swarm fresh).
pub(crate) const INTERVAL: Duration = Duration::from_secs(30);
const MAX_PEERS: usize = 200;

#[derive(Debug, Clone)]
struct Peer {
    addr: SocketAddrV4,
    seed: bool,
    seen: Instant,
    /// A drover agent (by its peer id).
    drover: bool,
}

/// One torrent's peers, by peer id.
type Swarm = HashMap<[u8; 20], Peer>;

/// The swarms of the server's torrents.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    known: Mutex<HashSet<[u8; 20]>>,
    swarms: Mutex<HashMap<[u8; 20], Swarm>>,
}

/// One announce, as parsed from the query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Announce {
    pub(crate) info_hash: [u8; 20],
    pub(crate) peer_id: [u8; 20],
    pub(crate) port: u16,
    pub(crate) left: Option<u64>,
    pub(crate) event: Option<String>,
    pub(crate) numwant: Option<usize>,
}

impl Tracker {
    /// A torrent the tracker serves.
    pub(crate) fn know(&self, info_hash: [u8; 20]) {
        self.known.lock().expect("lock").insert(info_hash);
    }

    /// Knows every torrent whose info dictionary is kept in `dir`.
    pub(crate) fn load(&self, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "info") {
                if let Ok(b) = std::fs::read(e.path()) {
                    self.know(imaging::torrent::info_hash(&b));
                }
            }
        }
    }

    /// Records the announce of a peer at `ip`; the bencoded answer (peers or a failure).
    /// `server`: the server's own seed of this torrent, listed first to peers that download.
    ///
    /// The server's seed announces too (its peer id says so, [`Role::ServerSeed`]): it is not
    /// recorded (it is `server` to everyone) and hears only of stock clients that download,
    /// which it then connects to (drover's agents connect to it themselves).
    pub(crate) fn announce(
        &self,
        a: &Announce,
        ip: IpAddr,
        now: Instant,
        server: Option<SocketAddrV4>,
    ) -> Vec<u8> {
        if !self.known.lock().expect("lock").contains(&a.info_hash) {
            return failure("unknown torrent: this tracker serves the drover server's images only");
        }
        let from_seed = Role::of(&a.peer_id) == Some(Role::ServerSeed);
        let ip = match ip {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) if from_seed => Ipv4Addr::LOCALHOST,
            IpAddr::V6(_) => return failure("IPv4 peers only"),
        };
        if a.port == 0 {
            return failure("port 0");
        }
        let me = SocketAddrV4::new(ip, a.port);
        let mut swarms = self.swarms.lock().expect("lock");
        let swarm = swarms.entry(a.info_hash).or_default();
        // Gone quiet, or an earlier run of this very peer (same address, another id).
        swarm.retain(|id, p| {
            now.duration_since(p.seen) < 2 * INTERVAL && (p.addr != me || *id == a.peer_id)
        });
        let stopped = a.event.as_deref() == Some("stopped");
        if stopped {
            swarm.remove(&a.peer_id);
        } else if !from_seed {
            swarm.insert(
                a.peer_id,
                Peer {
                    addr: me,
                    seed: a.left == Some(0) || a.event.as_deref() == Some("completed"),
                    seen: now,
                    drover: Role::of(&a.peer_id).is_some(),
                },
            );
        }
        let want = a.numwant.unwrap_or(50).clamp(1, MAX_PEERS);
        let me_seed = from_seed || a.left == Some(0);
        let mut others: Vec<&Peer> = swarm
            .iter()
            .filter(|(id, p)| **id != a.peer_id && !(me_seed && p.seed) && !(from_seed && p.drover))
            .map(|(_, p)| p)
            .collect();
        use rand::seq::SliceRandom;
        others.shuffle(&mut rand::thread_rng());
        let server = server.filter(|_| !me_seed);
        let mut compact = Vec::with_capacity(6 * (want.min(others.len()) + 1));
        for addr in server
            .iter()
            .chain(others.iter().map(|p| &p.addr))
            .take(want)
        {
            compact.extend_from_slice(&addr.ip().octets());
            compact.extend_from_slice(&addr.port().to_be_bytes());
        }
        let (seeds, leechers) = counts(swarm, server.is_some() || from_seed);
        let mut b = Vec::new();
        b.push(b'd');
        bytes(&mut b, b"complete");
        int(&mut b, seeds);
        bytes(&mut b, b"incomplete");
        int(&mut b, leechers);
        bytes(&mut b, b"interval");
        int(&mut b, INTERVAL.as_secs());
        bytes(&mut b, b"min interval");
        int(&mut b, 5);
        bytes(&mut b, b"peers");
        bytes(&mut b, &compact);
        b.push(b'e');
        b
    }

    /// The bencoded scrape (BEP 48) of `hashes`: seeds and downloaders of each torrent the
    /// tracker serves (the server's seed counted when `server_seeds` says it seeds it);
    /// unknown ones are left out.
    pub(crate) fn scrape(
        &self,
        hashes: &[[u8; 20]],
        now: Instant,
        server_seeds: impl Fn(&[u8; 20]) -> bool,
    ) -> Vec<u8> {
        let known = self.known.lock().expect("lock").clone();
        let swarms = self.swarms.lock().expect("lock");
        let mut picked: Vec<&[u8; 20]> = hashes.iter().filter(|h| known.contains(*h)).collect();
        picked.sort_unstable();
        picked.dedup();
        let mut b = b"d".to_vec();
        bytes(&mut b, b"files");
        b.push(b'd');
        for h in picked {
            let empty = Swarm::new();
            let live: Swarm = swarms
                .get(h)
                .unwrap_or(&empty)
                .iter()
                .filter(|(_, p)| now.duration_since(p.seen) < 2 * INTERVAL)
                .map(|(id, p)| (*id, p.clone()))
                .collect();
            let (seeds, leechers) = counts(&live, server_seeds(h));
            bytes(&mut b, h);
            b.push(b'd');
            bytes(&mut b, b"complete");
            int(&mut b, seeds);
            bytes(&mut b, b"downloaded");
            int(&mut b, 0);
            bytes(&mut b, b"incomplete");
            int(&mut b, leechers);
            b.push(b'e');
        }
        b.extend_from_slice(b"ee");
        b
    }
}

/// Seeds and downloaders in `swarm`, the server's seed counted when `server`.
fn counts(swarm: &Swarm, server: bool) -> (u64, u64) {
    let seeds = swarm.values().filter(|p| p.seed).count() as u64;
    (seeds + u64::from(server), swarm.len() as u64 - seeds)
}

fn failure(why: &str) -> Vec<u8> {
    let mut b = b"d".to_vec();
    bytes(&mut b, b"failure reason");
    bytes(&mut b, why.as_bytes());
    b.push(b'e');
    b
}

/// Percent-decodes a query value to bytes (info hashes and peer ids are binary).
fn unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Parses an announce's query string; the error names the bad parameter.
pub(crate) fn parse(query: &str) -> Result<Announce, String> {
    let mut info_hash = None;
    let mut peer_id = None;
    let mut port = None;
    let mut left = None;
    let mut event = None;
    let mut numwant = None;
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = unescape(v).ok_or_else(|| format!("{k}: bad percent-encoding"))?;
        let text = || String::from_utf8_lossy(&v).into_owned();
        match k {
            "info_hash" => {
                info_hash =
                    Some(<[u8; 20]>::try_from(v.as_slice()).map_err(|_| "info_hash: 20 bytes")?)
            }
            "peer_id" => {
                peer_id = Some(<[u8; 20]>::try_from(v.as_slice()).map_err(|_| "peer_id: 20 bytes")?)
            }
            "port" => {
                port = Some(
                    text()
                        .parse::<u16>()
                        .map_err(|_| "port: a number 1-65535")?,
                )
            }
            "left" => left = Some(text().parse::<u64>().map_err(|_| "left: a number")?),
            "event" => {
                let e = text();
                if !matches!(
                    e.as_str(),
                    "started" | "completed" | "stopped" | "" | "paused"
                ) {
                    return Err(format!("event {e:?}"));
                }
                event = (!e.is_empty()).then_some(e);
            }
            "numwant" => numwant = text().parse::<usize>().ok(),
            _ => {}
        }
    }
    Ok(Announce {
        info_hash: info_hash.ok_or("info_hash missing")?,
        peer_id: peer_id.ok_or("peer_id missing")?,
        port: port.ok_or("port missing")?,
        left,
        event,
        numwant,
    })
}

/// `GET /announce`. The server's own seed is at the address the peer reached the tracker at
/// (the request's Host, else the lab interface's address).
#[utoipa::path(get, path = "/announce", tag = "swarm", security(()),
    summary = "BitTorrent tracker (BEP 3, compact peers) for the server's image torrents; public; answers bencoded",
    params(("info_hash" = String, Query), ("peer_id" = String, Query), ("port" = u16, Query), ("left" = Option<u64>, Query),
        ("event" = Option<String>, Query, description = "started, completed or stopped"), ("numwant" = Option<u32>, Query)),
    responses((status = 200, description = "bencoded peers or failure reason", content_type = "text/plain")))]
pub(crate) async fn announce(
    State(s): State<Shared>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let body = match parse(q.as_deref().unwrap_or("")) {
        Ok(a) => {
            let server = s.deployer.seeder.port_for(&a.info_hash).and_then(|port| {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(|h| h.rsplit_once(':').map_or(h, |(host, _)| host))
                    .and_then(|h| h.parse::<Ipv4Addr>().ok())
                    .or(s.lab_addr)?;
                Some(SocketAddrV4::new(host, port))
            });
            s.tracker
                .announce(&a, from.ip().to_canonical(), Instant::now(), server)
        }
        Err(why) => failure(&why),
    };
    ([(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// `GET /scrape` (BEP 48): every `info_hash` of the query the tracker serves, with its seeds
/// and downloaders. Public, as trackers are; a malformed hash is a failure naming it.
#[utoipa::path(get, path = "/scrape", tag = "swarm", security(()),
    summary = "BitTorrent tracker scrape (BEP 48): seeds and downloaders of each given torrent the server serves; public; answers bencoded",
    params(("info_hash" = String, Query, description = "20 bytes, percent-encoded; repeated for several torrents")),
    responses((status = 200, description = "bencoded files dictionary or failure reason", content_type = "text/plain")))]
pub(crate) async fn scrape(State(s): State<Shared>, RawQuery(q): RawQuery) -> Response {
    let mut hashes = Vec::new();
    let mut bad = None;
    for kv in q.as_deref().unwrap_or("").split('&') {
        let Some(("info_hash", v)) = kv.split_once('=') else {
            continue;
        };
        match unescape(v).and_then(|b| <[u8; 20]>::try_from(b).ok()) {
            Some(h) => hashes.push(h),
            None => bad = Some("info_hash: 20 bytes, percent-encoded"),
        }
    }
    let body = match bad {
        Some(why) => failure(why),
        None => s.tracker.scrape(&hashes, Instant::now(), |h| {
            s.deployer.seeder.port_for(h).is_some()
        }),
    };
    ([(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(peer: u8, port: u16, left: u64, event: Option<&str>) -> Announce {
        Announce {
            info_hash: [7; 20],
            peer_id: [peer; 20],
            port,
            left: Some(left),
            event: event.map(str::to_string),
            numwant: None,
        }
    }

    fn peers(answer: &[u8]) -> Vec<SocketAddrV4> {
        let s = String::from_utf8_lossy(answer);
        let at = s.find("5:peers").expect("peers") + 7;
        let rest = &answer[at..];
        let colon = rest.iter().position(|&c| c == b':').unwrap();
        let n: usize = std::str::from_utf8(&rest[..colon])
            .unwrap()
            .parse()
            .unwrap();
        rest[colon + 1..colon + 1 + n]
            .chunks(6)
            .map(|c| {
                SocketAddrV4::new(
                    Ipv4Addr::new(c[0], c[1], c[2], c[3]),
                    u16::from_be_bytes([c[4], c[5]]),
                )
            })
            .collect()
    }

    #[test]
    fn peers_learn_of_each_other_and_leave() {
        let t = Tracker::default();
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        let now = Instant::now();
        let r = t.announce(&ann(1, 6881, 0, Some("started")), ip(1), now, None);
        assert!(String::from_utf8_lossy(&r).contains("unknown torrent"));
        t.know([7; 20]);
        let r = t.announce(&ann(1, 6881, 0, Some("started")), ip(1), now, None);
        assert!(peers(&r).is_empty());
        assert!(r.starts_with(b"d8:completei1e10:incompletei0e8:intervali30e"));
        let r = t.announce(&ann(2, 7000, 100, Some("started")), ip(2), now, None);
        assert_eq!(peers(&r), vec!["10.0.0.1:6881".parse().unwrap()]);
        let r = t.announce(&ann(3, 7001, 100, None), ip(3), now, None);
        let mut p = peers(&r);
        p.sort();
        assert_eq!(
            p,
            vec![
                "10.0.0.1:6881".parse().unwrap(),
                "10.0.0.2:7000".parse().unwrap()
            ]
        );
        // A seed is not told of other seeds; a stopped peer is gone; a silent one expires.
        let r = t.announce(&ann(1, 6881, 0, None), ip(1), now, None);
        assert_eq!(peers(&r).len(), 2);
        t.announce(&ann(2, 7000, 100, Some("stopped")), ip(2), now, None);
        let r = t.announce(&ann(1, 6881, 0, None), ip(1), now + INTERVAL, None);
        assert_eq!(peers(&r), vec!["10.0.0.3:7001".parse().unwrap()]);
        let r = t.announce(&ann(1, 6881, 0, None), ip(1), now + 3 * INTERVAL, None);
        assert!(peers(&r).is_empty());
        // The server's seed comes first for a downloader, and not at all for a seed.
        let me: SocketAddrV4 = "10.0.0.254:6881".parse().unwrap();
        let r = t.announce(
            &ann(4, 7002, 100, None),
            ip(4),
            now + 3 * INTERVAL,
            Some(me),
        );
        assert_eq!(peers(&r)[0], me);
        assert_eq!(peers(&r).len(), 2);
        assert!(r.starts_with(b"d8:completei2e10:incompletei1e"));
        // A probe that stops at once, in a swarm of seeds and the server: counted right.
        let r = t.announce(
            &ann(9, 9, 1, Some("stopped")),
            ip(9),
            now + 3 * INTERVAL,
            Some(me),
        );
        assert!(r.starts_with(b"d8:completei2e10:incompletei1e"));
        let r = t.announce(&ann(1, 6881, 0, None), ip(1), now + 3 * INTERVAL, Some(me));
        assert_eq!(peers(&r), vec!["10.0.0.4:7002".parse().unwrap()]);
    }

    /// A peer id of drover's `role`, or a stock client's (transmission's style) for None.
    fn id_of(role: Option<Role>, n: u8) -> [u8; 20] {
        let mut id = role.map_or(*b"-TR3000-xxxxxxxxxxxx", |r| r.peer_id().0);
        id[19] = n;
        id
    }

    #[test]
    fn the_servers_seed_hears_of_stock_clients_only_and_stale_runs_are_dropped() {
        let t = Tracker::default();
        t.know([7; 20]);
        let now = Instant::now();
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        let me: SocketAddrV4 = "10.0.0.254:6881".parse().unwrap();
        let with = |id: [u8; 20], port: u16, left: u64| Announce {
            peer_id: id,
            ..ann(0, port, left, None)
        };
        let agent = id_of(Some(Role::Agent), 1);
        let client = id_of(None, 2);
        let done_client = id_of(None, 3);
        let seed = id_of(Some(Role::ServerSeed), 4);
        t.announce(&with(agent, 7000, 100), ip(1), now, Some(me));
        t.announce(&with(client, 51413, 100), ip(2), now, Some(me));
        t.announce(&with(done_client, 51413, 0), ip(3), now, Some(me));
        // The seed (over loopback, even IPv6) learns of the downloading stock client alone,
        // and is not itself recorded.
        for from in [IpAddr::from([127, 0, 0, 1]), "::1".parse().unwrap()] {
            let r = t.announce(&with(seed, 6881, 0), from, now, Some(me));
            assert_eq!(peers(&r), vec!["10.0.0.2:51413".parse().unwrap()]);
        }
        let r = t.announce(&with(agent, 7000, 100), ip(1), now, Some(me));
        let p = peers(&r);
        assert_eq!(p[0], me);
        assert_eq!(p.len(), 3, "{p:?}");
        // A client started again (same address, new id): its old record goes, and it is never
        // told of itself; a stopping one is forgotten.
        let again = id_of(None, 5);
        let r = t.announce(&with(again, 51413, 100), ip(2), now, Some(me));
        assert!(
            !peers(&r).contains(&"10.0.0.2:51413".parse().unwrap()),
            "{:?}",
            peers(&r)
        );
        let r = t.announce(&with(agent, 7000, 100), ip(1), now, Some(me));
        assert_eq!(peers(&r).len(), 3);
        let stop = Announce {
            event: Some("stopped".into()),
            ..with(again, 51413, 100)
        };
        t.announce(&stop, ip(2), now, Some(me));
        let r = t.announce(&with(agent, 7000, 100), ip(1), now, Some(me));
        assert_eq!(peers(&r).len(), 2, "{:?}", peers(&r));

        // Scrape: seeds (the server's included) and downloaders; unknown hashes left out.
        let r = t.scrape(&[[7; 20], [9; 20], [7; 20]], now, |_| true);
        let mut want = b"d5:filesd20:".to_vec();
        want.extend_from_slice(&[7; 20]);
        want.extend_from_slice(b"d8:completei2e10:downloadedi0e10:incompletei1eeee");
        assert_eq!(String::from_utf8_lossy(&r), String::from_utf8_lossy(&want));
        assert_eq!(t.scrape(&[[9; 20]], now, |_| true), b"d5:filesdee");
    }

    #[test]
    fn queries_are_parsed_with_binary_hashes_and_bad_ones_named() {
        let q = "info_hash=%07%07%07%07%07%07%07%07%07%07%07%07%07%07%07%07%07%07%07%07\
                 &peer_id=-DR0100-abcdefghijkl&port=6881&uploaded=0&downloaded=0&left=42\
                 &compact=1&event=started&numwant=80";
        let a = parse(q).unwrap();
        assert_eq!(a.info_hash, [7; 20]);
        assert_eq!(&a.peer_id, b"-DR0100-abcdefghijkl");
        assert_eq!((a.port, a.left, a.numwant), (6881, Some(42), Some(80)));
        assert_eq!(a.event.as_deref(), Some("started"));
        for (bad, why) in [
            ("peer_id=-DR0100-abcdefghijkl&port=1", "info_hash missing"),
            (
                "info_hash=%07&peer_id=-DR0100-abcdefghijkl&port=1",
                "info_hash: 20 bytes",
            ),
            (&q.replace("port=6881", "port=99999"), "port"),
            (&q.replace("event=started", "event=boom"), "event"),
            ("info_hash=%zz", "bad percent-encoding"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
