#!/usr/bin/env bash
# The cost of personalization: a QEMU VM (BIOS, TCG) PXE-boots from drover, gets the Debian 12
# test image (tests/scripts/build-debian12: 413 MiB used) by unicast, reboots, and boots the
# restored system to its login prompt; once with `--personalize off` (the image untouched) and
# once with it on (hostname, machine-id, three new SSH host keys, /etc/hosts), in turn, RUNS
# times, with the release agent. Reports power-on to agent reboot, next power-on to the login
# prompt, their sum, and the agent's own account of the step (seconds, peak memory during it:
# VmHWM after resetting it through /proc/self/clear_refs).
#
# usage: sudo bash bench/personalize.sh [RUNS]   (default 3)
# Results: a Markdown table on stdout and in bench/out/personalize.md; raw rows in
# bench/out/personalize.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
OUT=$PWD/bench/out
mkdir -p "$OUT"
bash deploy/install-test-deps >/dev/null
cargo build --release --quiet -p server -p client-agent -p drover-tests \
  --bin drover --bin drover-agent --bin personalize_bench
DROVER_PREBUILT_BIN_DIR=$PWD/target/release target/release/personalize_bench "$RUNS" \
  "$OUT/personalize.tsv" 2>"$OUT/personalize.log" || { tail -40 "$OUT/personalize.log"; exit 1; }

python3 - "$OUT/personalize.tsv" <<'PY' | tee "$OUT/personalize.md"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
med = lambda mode, k: statistics.median(float(r[k]) for r in rows if r["mode"] == mode and r[k] not in ("", "-"))
n = sum(1 for r in rows if r["mode"] == "on")
print(f"| personalization | power-on → agent reboot (s) | power-on → login prompt (s) | sum (s) | the step itself (s) | agent peak memory during it (MiB) |")
print("|---|---|---|---|---|---|")
for mode in ("off", "on"):
    step = f"{med(mode, 'personalize_s'):.1f}" if mode == "on" else "–"
    peak = f"{med(mode, 'peak_mib'):.1f}" if mode == "on" else "–"
    print(f"| {mode} | {med(mode, 'to_reboot_s'):.1f} | {med(mode, 'to_login_s'):.1f} | {med(mode, 'total_s'):.1f} | {step} | {peak} |")
print(f"\nmedians of {n} run(s) each; on/off sum: {med('on', 'total_s') / med('off', 'total_s'):.2f}×")
PY
