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
