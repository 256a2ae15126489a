//! `personalize_bench`: the cost of personalization, for bench/personalize.sh. One BIOS VM
//! (QEMU, TCG) in a lab of network namespaces PXE-boots from drover, gets the Debian 12 test
//! image (tests/scripts/build-debian12) by unicast, reboots, and boots the restored system to
//! its login prompt; with personalization off and on in turn, `ROUNDS` times (first
//! argument, default 3). Each row: seconds from power-on until the agent rebooted, from the
//! next power-on to the login prompt, their sum, and what the agent said of its
//! personalization (seconds, peak memory). Rows go to the TSV file named by the second
//! argument (default bench/out/personalize.tsv) as they come. Needs root, QEMU from
//! deploy/install-test-deps, and DROVER_PREBUILT_BIN_DIR naming the drover and drover-agent
//! builds to measure.

use std::time::{Duration, Instant};

use drover_tests::sparse_file;
use drover_tests::vm::{debian12, Firmware, Site, Vm};

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(3);
    let out = args
        .next()
        .unwrap_or_else(|| "bench/out/personalize.tsv".into());
    let golden = debian12();
    let site = Site::new("dbn", false);
    let env = &site.env;
    env.capture(&golden, "debian12");
    let mac = "52:54:00:de:be:01";
    site.cli(&["machine", "add", mac, "--name", "bench-pc"]);
    site.lab.tap("tap0");
    let dir = env.path("vm");
    std::fs::create_dir_all(&dir).unwrap();
    let size = std::fs::metadata(&golden).unwrap().len();
    let mut rows =
        vec!["mode\tround\tto_reboot_s\tto_login_s\ttotal_s\tpersonalize_s\tpeak_mib".to_string()];
    for round in 1..=rounds {
        for mode in ["off", "on"] {
            site.cli(&[
                "deploy",
                "debian12",
                "--to",
                mac,
                "--transport",
                "unicast",
                "--personalize",
                mode,
            ]);
            let disk = env.path("disk.img");
            let _ = std::fs::remove_file(&disk);
            sparse_file(&disk, size);
            let start = |dir| {
                Vm::start(
                    &site.lab,
                    "tap0",
                    mac,
                    &[(&disk, None)],
                    Firmware::Bios,
                    dir,
                )
            };
            let t0 = Instant::now();
            let mut vm = start(&dir);
            assert!(vm.wait_exit(Duration::from_secs(1200)), "{}", vm.console());
            let to_reboot = t0.elapsed().as_secs_f64();
            let console = vm.console();
            assert!(console.contains("drover-agent: rebooting"), "{console}");
            // "personalization took 4.9 s, peak memory 62.6 MiB"
            let said = console
                .lines()
                .find_map(|l| l.split("personalization took ").nth(1))
                .unwrap_or("");
            let secs = said
                .split(' ')
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or("-");
            let peak = said
                .split("peak memory ")
                .nth(1)
                .and_then(|p| p.split(' ').next())
                .unwrap_or("-");
            assert_eq!(secs == "-", mode == "off", "{console}");
            drop(vm);
            let t1 = Instant::now();
            let mut vm = start(&dir);
            assert!(
                vm.wait_for(" login:", Duration::from_secs(900)),
                "{}",
                vm.console()
            );
            let to_login = t1.elapsed().as_secs_f64();
            drop(vm);
            let row = format!(
                "{mode}\t{round}\t{to_reboot:.1}\t{to_login:.1}\t{:.1}\t{secs}\t{peak}",
                to_reboot + to_login
            );
            eprintln!("{row}");
            rows.push(row);
            std::fs::write(&out, rows.join("\n") + "\n").unwrap();
        }
    }
}
