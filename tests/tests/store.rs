//! The store over time: versions under one name, recapture storing only what changed, rm and gc,
//! and the free-space check (a full store loses nothing it already held).

use std::fs;
use std::path::Path;

use drover_tests::*;

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn versions_recapture_rm_and_gc() {
    if !require("store", &["mkfs.ext4", "debugfs", "e2fsck"]) {
        return;
    }
    let env = Env::new();
    let img = env.path("golden.img");
    sparse_file(&img, 256 * MIB);
    let tree = env.path("tree");
    let files = make_tree(&tree, 100 * MIB, 21);
    run("mkfs.ext4", &["-q", "-F", "-d", s(&tree), s(&img)]);
    let v1 = env.capture(&img, "golden");
    assert_eq!(v1["version"], 1);

    // Change about 1% of the data: rewrite a few files in place with new contents.
    let mut changed = 0u64;
    let mut changed_files = 0u64;
    let total: u64 = files
        .iter()
        .map(|f| fs::metadata(tree.join(f)).unwrap().len())
        .sum();
    for (i, f) in files.iter().enumerate() {
        let len = fs::metadata(tree.join(f)).unwrap().len();
        if len == 0 || len > 256 << 10 || changed + len > total / 100 {
            continue;
        }
        let new = env.path(&format!("new{i}"));
        random_file(&new, len, 1000 + i as u64);
        run(
            "debugfs",
            &["-w", "-R", &format!("rm /{}", f.display()), s(&img)],
        );
        run(
            "debugfs",
            &[
                "-w",
                "-R",
                &format!("write {} /{}", s(&new), f.display()),
                s(&img),
            ],
        );
        changed += len;
        changed_files += 1;
    }
    assert!(changed > total / 200, "changed only {changed} of {total}");
    let v2 = env.capture(&img, "golden");
    assert_eq!(v2["version"], 2);
    let ratio = v2["new_bytes"].as_f64().unwrap() / v2["stored_bytes"].as_f64().unwrap();
    eprintln!(
        "recapture after changing {changed} of {total} bytes stored {:.2}% anew: {v2}",
        ratio * 100.0
    );
    // Only regions holding a rewritten file or changed metadata (inode table, bitmaps,
    // directory blocks, descriptors) are new; everything else is shared with version 1.
    let new_chunks = v2["new_chunks"].as_u64().unwrap();
    assert!(new_chunks >= 1, "{v2}");
    assert!(
        new_chunks <= changed_files + 4,
        "{new_chunks} new chunks for {changed_files} rewritten files: {v2}"
    );
    let m1 = env.manifest("golden@1");
    let m2 = env.manifest("golden@2");
    let old: std::collections::HashSet<_> = m1.chunks().map(|(_, c)| c.hash).collect();
    let fresh = m2.chunks().filter(|(_, c)| !old.contains(&c.hash)).count() as u64;
    assert_eq!(
        fresh, new_chunks,
        "new_chunks must count exactly the chunks version 1 lacked"
    );
    let insp = env.json(&["image", "inspect", "golden"]);
    assert_eq!(insp["version"], 2);
    assert_eq!(insp["new_chunks"], v2["new_chunks"]);
    assert!(insp["shared_chunks"].as_u64().unwrap() > 0);

    // Both versions listed; each addressable.
    let list = env.json(&["image", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(env.json(&["image", "inspect", "golden@1"])["version"], 1);
    let id1 = v1["id"].as_str().unwrap();
    assert_eq!(env.json(&["image", "inspect", &id1[..10]])["version"], 1);

    // v2's changed regions are stored as deltas against v1's chunks, so they are small.
    let store = env.store();
    let deltas: Vec<_> = m2
        .chunks()
        .filter_map(|(_, c)| store.chunk_base(&c.hash))
        .collect();
    assert!(!deltas.is_empty(), "no delta chunks in the recapture");
    // rm v1, gc frees exactly the chunks only v1 used that no delta of v2 is based on; v2
    // still verifies and restores.
    let v2_set: std::collections::HashSet<_> = m2.chunks().map(|(_, c)| c.hash).collect();
    let freeable = old
        .iter()
        .filter(|h| !v2_set.contains(h) && !deltas.contains(h))
        .count();
    env.ok(&["image", "rm", "golden@1"]);
    assert_eq!(env.json(&["image", "list"]).as_array().unwrap().len(), 1);
    let gc = env.json(&["image", "gc"]);
    assert_eq!(
        gc["removed_chunks"].as_u64().unwrap(),
        freeable as u64,
        "{gc} {v2}"
    );
    env.ok(&["image", "verify", "golden"]);
    let target = env.path("t.img");
    random_file(&target, 256 * MIB, 2);
    env.restore("golden", &target);
    let out = run_any("e2fsck", &["-fn", s(&target)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    env.ok(&["image", "rm", "golden"]);
    let gc = env.json(&["image", "gc"]);
    assert_eq!(gc["kept_chunks"], 0, "{gc}");
    let chunks = env.data().join("images/chunks");
    let left: usize = fs::read_dir(&chunks)
        .unwrap()
        .map(|d| fs::read_dir(d.unwrap().path()).unwrap().count())
        .sum();
    assert_eq!(left, 0);
}

#[test]
fn a_full_store_refuses_or_fails_cleanly_and_keeps_what_it_had() {
    if !require("full store", &["root", "mount", "mkfs.ext4"]) {
        return;
    }
    let env = Env::new();
    let store_dir = env.path("small-store");
    let _m = Mount::new(
        "mount",
        &["-t", "tmpfs", "-o", "size=80m", "tmpfs"],
        &store_dir,
    );
    let store = s(&store_dir);

    let small = env.path("small.img");
    sparse_file(&small, 16 * MIB);
    run("mkfs.ext4", &["-q", "-F", s(&small)]);
    env.json(&[
        "image",
        "capture",
        s(&small),
        "--name",
        "small",
        "--store",
        store,
    ]);

    // 100 MiB of incompressible files: more than the store holds.
    let big = env.path("big.img");
    sparse_file(&big, 192 * MIB);
    let tree = env.path("tree");
    fs::create_dir_all(&tree).unwrap();
    for i in 0..10 {
        random_file(&tree.join(format!("r{i}")), 10 * MIB, i);
    }
    run("mkfs.ext4", &["-q", "-F", "-d", s(&tree), s(&big)]);

    let err = env.fails(&[
        "image",
        "capture",
        s(&big),
        "--name",
        "big",
        "--store",
        store,
    ]);
    assert!(err.contains("free") && err.contains("gc"), "{err}");

    let err = env.fails(&[
        "image",
        "capture",
        s(&big),
        "--name",
        "big",
        "--store",
        store,
        "--skip-space-check",
    ]);
    assert!(err.contains("No space left on device"), "{err}");
    let list = env.json(&["image", "list", "--store", store]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["small"],
        "a failed capture must not list a half image"
    );
    env.ok(&["image", "verify", "small", "--store", store]);
    // gc frees what the failed capture left behind; the old image is intact.
    let gc = env.json(&["image", "gc", "--store", store]);
    assert!(gc["removed_chunks"].as_u64().unwrap() > 0, "{gc}");
    env.ok(&["image", "verify", "small", "--store", store]);
}
