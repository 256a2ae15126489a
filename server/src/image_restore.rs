//! `drover image restore`: one image onto one or several disks or files, each laid out for
//! its size — grown, kept or scaled when larger, shrunk when smaller.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use imaging::device::{BlockDevice, FileDevice};
use imaging::relayout::{self, LayoutMode, Relayout};
use imaging::restore::{restore_to_all, RestoreError};
use imaging::shrink;
use imaging::store::Store;
use serde_json::json;

use crate::image_cmd::same_file;
use crate::progress::Bar;
use transport::fmt;

/// What one target received.
struct Done {
    bytes_written: u64,
    gpt_relocated: bool,
    bytes_zeroed: u64,
    read_back: bool,
    changes: Vec<String>,
}

/// How `image restore` runs.
pub(crate) struct Options {
    /// Worker threads (0: one per core).
    pub(crate) threads: usize,
    /// The layout on a larger target.
    pub(crate) layout: LayoutMode,
    /// Where shrinking filesystems are staged (None: the system's temporary directory).
    pub(crate) scratch: Option<PathBuf>,
    /// Read a single target back too.
    pub(crate) read_back: bool,
    /// One JSON document on stdout.
    pub(crate) json: bool,
}

pub(crate) fn run(
    store: &Store,
    image: &str,
    targets: &[PathBuf],
    opts: &Options,
) -> anyhow::Result<ExitCode> {
    let Options {
        threads,
        layout,
        ref scratch,
        read_back,
        json,
    } = *opts;
    let img = store.resolve(image)?;
    let m = &img.manifest;
    let label = format!("{}@{}", m.name, m.name_version);
    let mut devs: Vec<(PathBuf, FileDevice)> = Vec::new();
    // Per target: its layout, and whether it is smaller than the image's disk.
    let mut plans: Vec<(Option<Relayout>, bool)> = Vec::new();
    for target in targets {
        if let Some(why) = imaging::usage::in_use(target)
            .with_context(|| format!("checking whether {} is in use", target.display()))?
        {
            bail!("refusing to restore onto {}: it is {why}", target.display());
        }
        if devs.iter().any(|(p, _)| same_file(p, target)) {
            bail!("{} is named twice", target.display());
        }
        let dev = FileDevice::open_write(target)
            .with_context(|| format!("opening {} for writing", target.display()))?;
        let on = || format!("restoring {label} onto {}", target.display());
        match imaging::restore::check_target(&label, m, &dev) {
            Ok(()) => {
                // Planned before a byte is written: a layout that cannot be is refused first.
                let plan = relayout::plan(m, dev.len(), layout)
                    .with_context(|| format!("laying {label} out on {}", target.display()))?;
                plans.push((Some(plan), false));
            }
            Err(RestoreError::TooSmall { .. }) => {
                // What the manifest alone rules out is refused without reading a chunk.
                shrink::plan(&label, m, dev.len(), &shrink::lower_bounds(m)).with_context(on)?;
                plans.push((None, true));
            }
            Err(e) => return Err(anyhow::Error::from(e).context(on())),
        }
        devs.push((target.clone(), dev));
    }
    // Smaller targets: how small each filesystem can get, from its own tool, before any
    // target is written.
    let mut scratch_files = None;
    if plans.iter().any(|(_, small)| *small) {
        let parent = scratch.clone().unwrap_or_else(std::env::temp_dir);
        let mut s = shrink::Scratch::new(&parent, threads)?;
        let smallest = devs
            .iter()
            .zip(&plans)
            .filter(|(_, (_, small))| *small)
            .map(|((_, d), _)| d.len())
            .min();
        let mins = shrink::minimums(&label, m, store, &mut s, smallest)
            .with_context(|| format!("finding how far {label} can shrink"))?;
        for ((target, dev), (plan, small)) in devs.iter().zip(plans.iter_mut()) {
            if *small {
                *plan = Some(
                    shrink::plan(&label, m, dev.len(), &mins)
                        .with_context(|| format!("restoring {label} onto {}", target.display()))?,
                );
            }
        }
        scratch_files = Some(s);
    }
    let bar = Bar::new(json);
    let t0 = std::time::Instant::now();
    let big: Vec<usize> = (0..devs.len()).filter(|&i| !plans[i].1).collect();
    let mut done: Vec<Option<Done>> = devs.iter().map(|_| None).collect();
    if !big.is_empty() {
        let refs: Vec<&dyn BlockDevice> = big
            .iter()
            .map(|&i| &devs[i].1 as &dyn BlockDevice)
            .collect();
        let read_back = read_back || targets.len() > 1;
        let res = restore_to_all(&label, m, store, &refs, threads, read_back, &bar);
        let rs = res.map_err(|e| match e {
            RestoreError::OnTarget { target, source } => {
                anyhow::Error::from(*source).context(format!(
                    "restoring {label} onto {}",
                    targets[big[target - 1]].display()
                ))
            }
            e => anyhow::Error::from(e).context(format!("restoring {label}")),
        })?;
        for (&i, r) in big.iter().zip(rs) {
            let (target, dev) = &devs[i];
            let plan = plans[i].0.as_ref().expect("planned");
            let changes = relayout::apply(target, dev, m, plan).with_context(|| {
                format!(
                    "restored {label} onto {}, but laying it out ({layout}) failed",
                    target.display()
                )
            })?;
            done[i] = Some(Done {
                bytes_written: r.bytes_written,
                gpt_relocated: r.gpt_relocated,
                bytes_zeroed: r.bytes_zeroed,
                read_back,
                changes,
            });
        }
    }
    if let Some(mut s) = scratch_files {
        // Targets with the same layout (the same size) share one shrink and one read of
        // every chunk.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for i in (0..devs.len()).filter(|&i| plans[i].1) {
            match groups.iter_mut().find(|g| plans[g[0]].0 == plans[i].0) {
                Some(g) => g.push(i),
                None => groups.push(vec![i]),
            }
        }
        for g in groups {
            let plan = plans[g[0]].0.as_ref().expect("planned");
            let refs: Vec<&dyn BlockDevice> =
                g.iter().map(|&i| &devs[i].1 as &dyn BlockDevice).collect();
            let names: Vec<String> = g
                .iter()
                .map(|&i| targets[i].display().to_string())
                .collect();
            let r = shrink::restore_shrunk(&label, m, store, &refs, plan, &mut s, &bar)
                .with_context(|| format!("restoring {label} shrunk onto {}", names.join(", ")))?;
            for &i in &g {
                done[i] = Some(Done {
                    bytes_written: r.bytes_written,
                    gpt_relocated: m.table.kind == imaging::table::TableKind::Gpt,
                    bytes_zeroed: 0,
                    read_back: true,
                    changes: r.changes.clone(),
                });
            }
        }
    }
    bar.finish();
    let done: Vec<Done> = done.into_iter().map(|d| d.expect("every target")).collect();
    let secs = t0.elapsed().as_secs_f64();
    print(
        &img.id, m, &label, targets, &plans, &done, layout, secs, json,
    );
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
fn print(
    id: &str,
    m: &imaging::manifest::Manifest,
    label: &str,
    targets: &[PathBuf],
    plans: &[(Option<Relayout>, bool)],
    done: &[Done],
    layout: LayoutMode,
    secs: f64,
    json: bool,
) {
    let chunks = m.chunks().count();
    let one = |i: usize| {
        json!({
            "target": targets[i].display().to_string(),
            "bytes_written": done[i].bytes_written,
            "gpt_relocated": done[i].gpt_relocated,
            "bytes_zeroed": done[i].bytes_zeroed,
            "partitions": plans[i].0.as_ref().map(|p| &p.parts),
            "shrunk": plans[i].1,
            "layout_changes": done[i].changes,
            "read_back": done[i].read_back,
        })
    };
    if json {
        let mut v = json!({
            "id": id,
            "name": m.name,
            "version": m.name_version,
            "chunks": chunks,
            "layout": layout,
            "seconds": secs,
            "targets": (0..targets.len()).map(one).collect::<Vec<_>>(),
        });
        // The first target's fields at the top too (what one target always printed).
        if let (Some(o), serde_json::Value::Object(first)) = (v.as_object_mut(), one(0)) {
            o.extend(first);
        }
        println!("{v}");
        return;
    }
    for (i, d) in done.iter().enumerate() {
        println!(
            "restored {label} onto {}: {} written from {chunks} chunks{}{}{}, {secs:.1} s",
            targets[i].display(),
            fmt::bytes(d.bytes_written),
            if d.bytes_zeroed > 0 {
                format!(
                    ", {} of raw-copied areas zeroed",
                    fmt::bytes(d.bytes_zeroed)
                )
            } else {
                String::new()
            },
            if plans[i].1 {
                ", shrunk to fit the smaller disk"
            } else if d.gpt_relocated {
                ", GPT moved to the end of the larger disk"
            } else {
                ""
            },
            if d.read_back { ", read back" } else { "" },
        );
        for line in &d.changes {
            println!("  {line}");
        }
    }
}
