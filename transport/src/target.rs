//! The restore target every source fills: a [`Sink`] (checks each chunk against its hash,
//! writes it, reads it back) scanned once for what it holds already, and the "have" set that
//! multicast, the swarm and unicast then fill in turn. Each source asks it what is missing,
//! and it counts what came by which way, so progress and the result are one record whatever
//! path the bytes took.
//!
//! It does not fetch anything: the sources are the callers' (the agent's plan, the
//! `drover multicast receive` command).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::Context;

use crate::session::{Description, Sink};

/// How a chunk reached the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Decoded from the multicast stream.
    Multicast,
    /// Fetched over HTTP.
    Unicast,
    /// Written by the BitTorrent swarm beside the target, then found whole by a check.
    Swarm,
}

/// How far the target is: stored bytes and the chunks by the way they came.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Plaintext bytes stored and verified (and, while a swarm runs, what it reports written).
    pub stored_bytes: u64,
    pub total_bytes: u64,
    /// Receive rate, bits/s (the source's, or the caller's measure).
    pub rate_bps: u64,
    pub multicast_chunks: u64,
    pub unicast_chunks: u64,
    /// Chunks the swarm brought.
    pub swarm_chunks: u64,
    /// Chunks found already written by the first scan (a resumed write).
    pub kept_chunks: u64,
}

/// What a [`Target::store`] of a chunk came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Written and read back; `complete`: it was the last one missing.
    Written { complete: bool },
    /// Held already (another source was first): nothing written.
    Held,
    /// The payload is wrong (hash, decompression): nothing written, fetch it again.
    Wrong(String),
}

/// A restore target and what it holds.
pub struct Target {
    sink: Sink,
    have: Mutex<Have>,
    /// Plaintext bytes a source writing beside the target (the swarm) says it wrote and that
    /// are not checked yet: progress only.
    beside: AtomicU64,
    finished: Mutex<bool>,
}

struct Have {
    chunk: Vec<bool>,
    count: usize,
    stored_bytes: u64,
    kept: u64,
    multicast: u64,
    unicast: u64,
    swarm: u64,
}

impl Target {
    /// Opens `path` for `desc` (see [`Sink::open`]) and, with `resume`, scans it once for the
    /// chunks it holds already. Blocking.
    pub fn open(path: &Path, desc: Description, resume: bool) -> anyhow::Result<Self> {
        Self::on(Sink::open(path, desc)?, resume)
    }

    /// Opens every one of `paths` for `desc`, written as one (see [`Sink::open_all`]), and
    /// with `resume` scans them for the chunks each holds already. Blocking.
    pub fn open_all(
        paths: &[std::path::PathBuf],
        desc: Description,
        resume: bool,
    ) -> anyhow::Result<Self> {
        Self::on(Sink::open_all(paths, desc)?, resume)
    }

    /// A target over an opened sink. Blocking (the scan).
    pub fn on(sink: Sink, resume: bool) -> anyhow::Result<Self> {
        let chunk = if resume {
            sink.scan()
                .with_context(|| format!("checking what {} holds", sink.path.display()))?
        } else {
            vec![false; sink.chunks()]
        };
        let count = chunk.iter().filter(|&&h| h).count();
        let stored_bytes = (0..sink.chunks())
            .filter(|&i| chunk[i])
            .map(|i| sink.plain_len(i))
            .sum();
        Ok(Self {
            have: Mutex::new(Have {
                chunk,
                count,
                stored_bytes,
                kept: count as u64,
                multicast: 0,
                unicast: 0,
                swarm: 0,
            }),
            sink,
            beside: AtomicU64::new(0),
            finished: Mutex::new(false),
        })
    }

    /// The sink underneath (its description, a read-back check).
    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    /// Chunks in all.
    pub fn chunks(&self) -> usize {
        self.sink.chunks()
    }

    /// Whether chunk `i` is on the target.
    pub fn has(&self, i: usize) -> bool {
        self.have.lock().expect("lock").chunk[i]
    }

    /// The chunks (a copy of the have set).
    pub fn held(&self) -> Vec<bool> {
        self.have.lock().expect("lock").chunk.clone()
    }

    /// The chunks still missing, in order.
    pub fn missing(&self) -> Vec<usize> {
        let h = self.have.lock().expect("lock");
        (0..h.chunk.len()).filter(|&i| !h.chunk[i]).collect()
    }

    /// Whether every chunk is on the target.
    pub fn complete(&self) -> bool {
        let h = self.have.lock().expect("lock");
        h.count == h.chunk.len()
    }

    /// Checks chunk `i`'s payload, writes it and reads it back (see [`Sink::write`]), unless
    /// the target holds it already. The error is the output failing (fatal).
    pub fn store(&self, i: usize, payload: &[u8], via: Via) -> anyhow::Result<Stored> {
        if self.has(i) {
            return Ok(Stored::Held);
        }
        if let Err(why) = self.sink.write(i, payload)? {
            return Ok(Stored::Wrong(why));
        }
        Ok(Stored::Written {
            complete: self.mark(i, via),
        })
    }

    /// Records chunk `i` as on the target; returns whether every chunk now is.
    fn mark(&self, i: usize, via: Via) -> bool {
        let mut h = self.have.lock().expect("lock");
        if !std::mem::replace(&mut h.chunk[i], true) {
            h.count += 1;
            h.stored_bytes += self.sink.plain_len(i);
            match via {
                Via::Multicast => h.multicast += 1,
                Via::Unicast => h.unicast += 1,
                Via::Swarm => h.swarm += 1,
            }
        }
        h.count == h.chunk.len()
    }

    /// Checks the missing chunks on the disk (what a source writing beside the target, the
    /// swarm, wrote) and records those that are whole as come `via` it. Blocking. Returns
    /// how many were found.
    pub fn check_missing(&self, via: Via) -> anyhow::Result<u64> {
        self.beside.store(0, Ordering::Relaxed);
        let mut found = 0;
        for i in self.missing() {
            if self.sink.holds(i)? {
                self.mark(i, via);
                found += 1;
            }
        }
        Ok(found)
    }

    /// What a source writing beside the target says it wrote (plaintext bytes; progress only,
    /// until [`check_missing`](Self::check_missing) counts what is whole).
    pub fn set_beside(&self, bytes: u64) {
        self.beside.store(bytes, Ordering::Relaxed);
    }

    /// Writes what follows the chunks (the GPT backup) and syncs, once every chunk is on the
    /// target; a second call does nothing. Blocking.
    pub fn finish(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.complete(),
            "{} chunk(s) of {} are still missing",
            self.missing().len(),
            self.sink.path.display()
        );
        let mut done = self.finished.lock().expect("lock");
        if !*done {
            self.sink
                .finish()
                .with_context(|| format!("finishing {}", self.sink.path.display()))?;
            *done = true;
        }
        Ok(())
    }

    /// Where the target is (`rate_bps` 0: the caller measures).
    pub fn progress(&self) -> Progress {
        let h = self.have.lock().expect("lock");
        let total = self.sink.desc().plain_bytes();
        Progress {
            stored_bytes: (h.stored_bytes + self.beside.load(Ordering::Relaxed)).min(total),
            total_bytes: total,
            rate_bps: 0,
            multicast_chunks: h.multicast,
            unicast_chunks: h.unicast,
            swarm_chunks: h.swarm,
            kept_chunks: h.kept,
        }
    }
}

#[cfg(test)]
mod tests {
    use imaging::device::{BlockDevice, MemDevice};

    use super::*;
    use crate::session::{ChunkDesc, Content, DESCRIPTION_FORMAT, FILE_CHUNK};

    fn file_desc(chunks: &[Vec<u8>]) -> Description {
        Description {
            format: DESCRIPTION_FORMAT,
            session: 1,
            name: "f".into(),
            symbol_size: proto::wire::DEFAULT_SYMBOL_SIZE,
            max_block_symbols: proto::layout::DEFAULT_MAX_BLOCK_SYMBOLS,
            chunks: chunks
                .iter()
                .map(|c| ChunkDesc {
                    len: c.len() as u32,
                    plain_len: c.len() as u32,
                    hash: imaging::manifest::Hash::of(c),
                })
                .collect(),
            content: Content::File {
                size: chunks.iter().map(|c| c.len() as u64).sum(),
            },
            live: false,
        }
    }

    #[test]
    fn each_chunk_is_counted_once_by_the_way_it_came_and_wrong_data_is_not_written() {
        let chunks: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i + 1; FILE_CHUNK as usize]).collect();
        let disk = MemDevice::new(vec![0; 4 * FILE_CHUNK as usize]);
        // Chunk 1 is on the disk already.
        disk.write_at(&chunks[1], FILE_CHUNK).unwrap();
        let sink = Sink::on(Box::new(disk), Path::new("mem"), file_desc(&chunks)).unwrap();
        let t = Target::on(sink, true).unwrap();
        assert_eq!(t.missing(), vec![0, 2, 3]);
        assert_eq!(t.progress().kept_chunks, 1);
        assert!(t.finish().is_err(), "an incomplete target is not finished");

        assert_eq!(
            t.store(0, &chunks[0], Via::Multicast).unwrap(),
            Stored::Written { complete: false }
        );
        assert_eq!(t.store(0, &chunks[0], Via::Unicast).unwrap(), Stored::Held);
        assert!(matches!(
            t.store(2, &chunks[3], Via::Unicast).unwrap(),
            Stored::Wrong(_)
        ));
        assert!(!t.has(2));
        assert_eq!(
            t.store(2, &chunks[2], Via::Unicast).unwrap(),
            Stored::Written { complete: false }
        );
        // The swarm writes beside the target: found by the check of what is missing.
        t.set_beside(FILE_CHUNK);
        assert_eq!(t.progress().stored_bytes, 4 * FILE_CHUNK);
        assert_eq!(t.check_missing(Via::Swarm).unwrap(), 0);
        assert_eq!(t.progress().stored_bytes, 3 * FILE_CHUNK);
        t.sink().write(3, &chunks[3]).unwrap().unwrap();
        assert!(
            !t.complete(),
            "written beside the target: not counted before the check"
        );
        assert_eq!(t.check_missing(Via::Swarm).unwrap(), 1);
        assert!(t.complete());
        let p = t.progress();
        assert_eq!(
            (
                p.kept_chunks,
                p.multicast_chunks,
                p.unicast_chunks,
                p.swarm_chunks
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(p.stored_bytes, p.total_bytes);
        t.finish().unwrap();
        t.finish().unwrap();
    }
}
