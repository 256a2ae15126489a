//! Backward compatibility: images written by earlier versions of drover (committed under
//! `tests/samples/vN/`, with the disks they were captured from) must still decode, verify and
//! restore byte-identically. Add a new `vN` folder whenever the format changes; never edit one.

use std::fs;
use std::path::{Path, PathBuf};

use imaging::device::{BlockDevice, MemDevice};
use imaging::manifest::Hash;
use imaging::progress::NoProgress;
use imaging::restore::{restore, verify};
use imaging::store::Store;

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/samples")
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[test]
fn version_1_images_restore_byte_identically() {
    // Work on a copy: opening a store creates its lock and temp folder.
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&samples().join("v1"), tmp.path());
    let store = Store::open(tmp.path()).unwrap();
    let all = store.list().unwrap();
    let names: Vec<String> = all
        .iter()
        .map(|i| format!("{}@{}", i.manifest.name, i.manifest.name_version))
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    for (img, source) in [
        ("sample-mbr@1", "disk-v1.img"),
        ("sample-ext2@1", ""),
        ("sample-ext2@2", "ext2-v1.img"),
    ] {
        let i = store.resolve(img).unwrap();
        // The id is the BLAKE3 of the manifest file as stored.
        let bytes = fs::read(tmp.path().join("manifests").join(format!("{}.json", i.id))).unwrap();
        assert_eq!(Hash::of(&bytes).to_hex(), i.id, "{img}");
        let v = verify(&i.manifest, &store, 1, &NoProgress);
        assert!(v.bad.is_empty(), "{img}: {:?}", v.bad);
        let target = MemDevice::new(vec![0xA5; i.manifest.disk_size as usize]);
        restore(img, &i.manifest, &store, &target, 2, &NoProgress).unwrap();
        if source.is_empty() {
            continue; // version 1 of the ext2 image: its source was changed by version 2
        }
        let want = fs::read(samples().join(source)).unwrap();
        let got = target.to_vec();
        for a in &i.manifest.areas {
            for e in a.used.iter() {
                let (s, t) = ((a.offset + e.start) as usize, (a.offset + e.end()) as usize);
                assert!(want[s..t] == got[s..t], "{img}: bytes {s}..{t} differ");
            }
        }
        assert_eq!(target.len(), want.len() as u64);
    }
    // Version 2 of the ext2 image holds a delta chunk against version 1's.
    let v2 = store.resolve("sample-ext2@2").unwrap().manifest;
    assert!(v2
        .chunks()
        .any(|(_, c)| store.chunk_base(&c.hash).is_some()));
}
