//! A stream straight from a machine's disk (`drover deploy --from MAC`): the chunks of an
//! image that is being captured while it is sent.
//!
//! The source's agent announces the capture's outline first ([`imaging::capture::outline`]:
//! every chunk's place and plaintext length, hashes pending), then uploads each chunk as it
//! reads it, saying which one it is ([`Live::place`]); the server has checked it against its
//! hash and stored it. A sender's payload for a live chunk waits until it is placed and is
//! its hash followed by its plaintext ([`payload`]), so every receiver checks the plaintext
//! against the hash the source computed before it writes a byte, by whichever path it came.
//! Once the source commits its manifest ([`Live::finish`]: the same chunks, in the same
//! places, with the hashes placed), a receiver compares what it wrote with it.
//!
//! Not here: the uploads and the session (the server's), the writing (the [`crate::session::Sink`]).

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use imaging::manifest::{Hash, Manifest};

/// Bytes before a live chunk's plaintext: its hash.
pub const HEADER: usize = 32;

/// A live chunk's payload: `hash`, then `plain`.
pub fn payload(hash: &Hash, plain: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(HEADER + plain.len());
    p.extend_from_slice(&hash.0);
    p.extend_from_slice(plain);
    p
}

/// A live chunk's payload split into its hash and plaintext, checked against each other and
/// against the plaintext length expected; the error says what is wrong.
pub fn open(payload: &[u8], plain_len: usize) -> Result<(Hash, &[u8]), String> {
    if payload.len() != HEADER + plain_len {
        return Err(format!(
            "{} bytes, expected {} (a hash and {plain_len} bytes)",
            payload.len(),
            HEADER + plain_len
        ));
    }
    let (h, plain) = payload.split_at(HEADER);
    let hash = Hash(h.try_into().expect("32 bytes"));
    if Hash::of(plain) != hash {
        return Err("does not match its hash".into());
    }
    Ok((hash, plain))
}

/// The chunks of a capture in progress, as its uploads place them.
pub struct Live {
    outline: Manifest,
    lens: Vec<usize>,
    state: Mutex<State>,
    cond: Condvar,
}

#[derive(Default)]
struct State {
    hashes: Vec<Option<Hash>>,
    placed: usize,
    failed: Option<String>,
    finished: Option<Manifest>,
}

impl Live {
    /// The stream of a capture whose outline is `outline`.
    pub fn new(outline: Manifest) -> anyhow::Result<Self> {
        outline.validate()?;
        let cs = outline.chunk_size;
        let lens: Vec<usize> = outline
            .chunks()
            .map(|(a, c)| a.region_len(c.index, cs) as usize)
            .collect();
        ensure!(!lens.is_empty(), "the source disk holds no data");
        ensure!(
            outline.chunks().all(|(_, c)| c.hash == Hash::PENDING),
            "an outline's chunks have no hashes yet"
        );
        Ok(Self {
            state: Mutex::new(State {
                hashes: vec![None; lens.len()],
                ..State::default()
            }),
            outline,
            lens,
            cond: Condvar::new(),
        })
    }

    /// What the source announced.
    pub fn outline(&self) -> &Manifest {
        &self.outline
    }

    /// Chunks in the stream.
    pub fn chunks(&self) -> usize {
        self.lens.len()
    }

    /// Plaintext bytes of chunk `i`, if there is one.
    pub fn plain_len(&self, i: usize) -> Option<usize> {
        self.lens.get(i).copied()
    }

    /// Chunks placed so far.
    pub fn placed(&self) -> usize {
        self.lock().placed
    }

    /// Whether chunk `i` is placed.
    pub fn is_placed(&self, i: usize) -> bool {
        self.lock().hashes.get(i).is_some_and(Option::is_some)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Chunk `i` is `hash` (stored by the caller, checked against it). Placing a chunk again
    /// with the same hash is harmless; with another, an error.
    pub fn place(&self, i: usize, hash: Hash) -> Result<(), String> {
        let mut s = self.lock();
        let n = s.hashes.len();
        let slot = s
            .hashes
            .get_mut(i)
            .ok_or_else(|| format!("chunk {i}: the stream has {n}"))?;
        match *slot {
            Some(h) if h == hash => return Ok(()),
            Some(h) => return Err(format!("chunk {i} is {h} already, not {hash}")),
            None => *slot = Some(hash),
        }
        s.placed += 1;
        drop(s);
        self.cond.notify_all();
        Ok(())
    }

    /// The source failed (or was cancelled): everything waiting on it fails with `why`.
    pub fn fail(&self, why: &str) {
        let mut s = self.lock();
        if s.failed.is_none() && s.finished.is_none() {
            s.failed = Some(why.to_string());
        }
        drop(s);
        self.cond.notify_all();
    }

    /// Why the source failed, if it did.
    pub fn failed(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    /// The hash of chunk `i`, waiting up to `wait` for the source to place it.
    pub fn hash(&self, i: usize, wait: Duration) -> anyhow::Result<Hash> {
        let end = Instant::now() + wait;
        let mut s = self.lock();
        loop {
            match s.hashes.get(i) {
                None => bail!("no chunk {i} in a stream of {}", s.hashes.len()),
                Some(Some(h)) => return Ok(*h),
                Some(None) => {}
            }
            if let Some(why) = &s.failed {
                bail!("the source machine failed: {why}");
            }
            let now = Instant::now();
            if now >= end {
                bail!(
                    "chunk {i} did not come from the source machine within {} s",
                    wait.as_secs()
                );
            }
            s = self
                .cond
                .wait_timeout(s, end - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The source's committed manifest: accepted when it lists the outline's chunks, each
    /// with the hash placed for it.
    pub fn finish(&self, m: &Manifest) -> Result<(), String> {
        let mut s = self.lock();
        if let Some(why) = &s.failed {
            return Err(format!("the stream failed already: {why}"));
        }
        let theirs: Vec<_> = m.chunks().collect();
        if theirs.len() != self.lens.len() {
            return Err(format!(
                "the manifest lists {} chunks, the outline {}",
                theirs.len(),
                self.lens.len()
            ));
        }
        for (i, ((a, c), (oa, oc))) in theirs.iter().zip(self.outline.chunks()).enumerate() {
            if a.offset != oa.offset || a.len != oa.len || c.index != oc.index {
                return Err(format!("chunk {i} is not where the outline put it"));
            }
            match s.hashes[i] {
                Some(h) if h == c.hash => {}
                Some(h) => {
                    return Err(format!(
                        "chunk {i} was sent as {h}, the manifest says {}",
                        c.hash
                    ))
                }
                None => return Err(format!("chunk {i} ({}) was never uploaded", c.hash)),
            }
        }
        s.finished = Some(m.clone());
        drop(s);
        self.cond.notify_all();
        Ok(())
    }

    /// The committed manifest, once there is one.
    pub fn finished(&self) -> Option<Manifest> {
        self.lock().finished.clone()
    }

    /// Waits up to `wait` for the source to commit (or fail).
    pub fn wait_finished(&self, wait: Duration) -> anyhow::Result<Option<Manifest>> {
        let end = Instant::now() + wait;
        let mut s = self.lock();
        loop {
            if let Some(m) = &s.finished {
                return Ok(Some(m.clone()));
            }
            if let Some(why) = &s.failed {
                bail!("the source machine failed: {why}");
            }
            let now = Instant::now();
            if now >= end {
                return Ok(None);
            }
            s = self
                .cond
                .wait_timeout(s, end - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use imaging::capture::{
        capture_planned, outline, plan, CaptureError, CaptureOptions, ChunkSink,
    };
    use imaging::device::MemDevice;
    use imaging::progress::NoProgress;

    use super::*;

    const MIB: u64 = 1 << 20;

    /// Places each chunk as the capture reads it.
    struct Placer<'a>(&'a Live);

    impl ChunkSink for Placer<'_> {
        fn put(&self, _: &Hash, _: &[u8], _: Option<&Hash>) -> Result<(u64, bool), CaptureError> {
            unreachable!("a streamed capture says where each chunk goes")
        }
        fn put_at(
            &self,
            seq: usize,
            hash: &Hash,
            plain: &[u8],
            _: Option<&Hash>,
        ) -> Result<(u64, bool), CaptureError> {
            assert_eq!(self.0.plain_len(seq), Some(plain.len()));
            self.0.place(seq, *hash).map_err(CaptureError::Sink)?;
            Ok((plain.len() as u64, true))
        }
    }

    fn disk() -> MemDevice {
        let mut data = vec![0u8; (8 * MIB) as usize];
        for (i, b) in data.iter_mut().enumerate() {
            if (i as u64 / MIB) % 3 != 1 {
                *b = (i % 251) as u8 ^ (i / 4093) as u8;
            }
        }
        MemDevice::new(data)
    }

    #[test]
    fn the_outline_names_every_chunk_the_capture_reads_in_the_order_it_places_them() {
        let dev = disk();
        let mut o = CaptureOptions::new("live");
        o.chunk_size = MIB;
        let p = plan(&dev, MIB).unwrap();
        let live = Arc::new(Live::new(outline(&dev, "mem", &o, &p)).unwrap());
        let waiter = {
            let live = live.clone();
            std::thread::spawn(move || live.hash(live.chunks() - 1, Duration::from_secs(60)))
        };
        let c = capture_planned(&dev, "mem", &Placer(&live), &o, p, &NoProgress).unwrap();
        assert_eq!(live.placed(), live.chunks());
        let last = c.manifest.chunks().last().unwrap().1.hash;
        assert_eq!(waiter.join().unwrap().unwrap(), last);
        live.finish(&c.manifest).unwrap();
        assert!(live.finished().is_some());
        // Each payload opens to its chunk's plaintext; one bit off does not.
        let plain = vec![7u8; 4096];
        let mut p = payload(&Hash::of(&plain), &plain);
        assert_eq!(open(&p, 4096).unwrap().1, &plain[..]);
        assert!(open(&p, 4095).unwrap_err().contains("expected"));
        p[HEADER + 9] ^= 1;
        assert_eq!(open(&p, 4096).unwrap_err(), "does not match its hash");
    }

    #[test]
    fn a_manifest_other_than_what_was_sent_is_refused_and_a_failed_source_ends_the_waits() {
        let dev = disk();
        let mut o = CaptureOptions::new("live");
        o.chunk_size = MIB;
        let p = plan(&dev, MIB).unwrap();
        let live = Live::new(outline(&dev, "mem", &o, &p)).unwrap();
        let c = capture_planned(&dev, "mem", &Placer(&live), &o, p.clone(), &NoProgress).unwrap();
        let mut other = c.manifest.clone();
        other.areas[0].chunks[1].hash = Hash::of(b"other");
        assert!(live
            .finish(&other)
            .unwrap_err()
            .contains("chunk 1 was sent as"));
        assert!(live
            .place(1, Hash::of(b"other"))
            .unwrap_err()
            .contains("already"));
        assert!(live.place(99, Hash::of(b"x")).is_err());

        let live = Arc::new(Live::new(outline(&dev, "mem", &o, &p)).unwrap());
        let waiter = {
            let live = live.clone();
            std::thread::spawn(move || live.hash(0, Duration::from_secs(60)))
        };
        live.fail("its disk could not be read");
        let e = waiter.join().unwrap().unwrap_err();
        assert!(format!("{e}").contains("its disk could not be read"), "{e}");
        assert!(live.finish(&c.manifest).is_err());
        assert!(live.wait_finished(Duration::from_secs(1)).is_err());
    }
}
