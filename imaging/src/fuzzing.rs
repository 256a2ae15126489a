//! Entry points for the fuzz targets in `fuzz/` and for the tests that replay their corpus:
//! every decoder of untrusted bytes, over an in-memory device. None of them may panic.

use crate::device::MemDevice;

/// Parses `data` as a manifest.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = crate::manifest::Manifest::decode(data) {
        // A manifest that validates must round-trip.
        let again = crate::manifest::Manifest::decode(&m.encode()).expect("re-decode");
        assert_eq!(again, m);
    }
}

/// Runs every filesystem reader, and the scan with its fallback, over `data`. What the scan
/// returns (after its own checks) must stay inside the device.
pub fn fs_readers(data: &[u8]) {
    let dev = MemDevice::new(data.to_vec());
    for r in crate::fs::fuzzing::each_reader(&dev) {
        assert!(r.used.is_normalized(), "unnormalized map");
    }
    if let Ok(s) = crate::fs::scan(&dev, 1 << 16) {
        assert!(s.report.used.is_normalized());
        assert!(
            s.report.used.end() <= data.len() as u64,
            "used map past the device"
        );
    }
}

/// Reads `data` as a disk: partition table, then the capture plan over it.
pub fn table(data: &[u8]) {
    let dev = MemDevice::new(data.to_vec());
    if let Ok(l) = crate::table::detect(&dev) {
        for p in &l.partitions {
            assert!(p.end() <= data.len() as u64, "partition past the disk");
        }
    }
    let _ = crate::capture::plan(&dev, 1 << 16);
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    /// A cheap stand-in for the fuzzer in every test run: the hand-built filesystem seeds
    /// with a few bytes changed at random, many times over, through every reader. Checksums
    /// stop most changes early, so structure fields are also changed with their blocks'
    /// checksums left to fail, and the readers must refuse, never panic.
    #[test]
    fn mutated_seeds_never_panic_a_reader() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/fs_readers");
        let mut rng = rand::rngs::StdRng::seed_from_u64(20);
        let mut seeds = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if !p
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
            {
                continue;
            }
            seeds += 1;
            let seed = std::fs::read(&p).unwrap();
            for _ in 0..150 {
                let mut d = seed.clone();
                for _ in 0..rng.gen_range(1..8) {
                    // Mostly where the metadata is: the first 128 KiB and the end.
                    let at = if rng.gen_bool(0.7) {
                        rng.gen_range(0..d.len().min(128 << 10))
                    } else {
                        rng.gen_range(0..d.len())
                    };
                    d[at] = rng.gen();
                }
                super::fs_readers(&d);
            }
        }
        assert!(seeds >= 5, "{seeds} seeds");
    }
}
