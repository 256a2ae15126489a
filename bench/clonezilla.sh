#!/usr/bin/env bash
# Importing a Clonezilla image (issue 23): a GPT disk with an ext4 partition holding 400 MiB of
# files, saved by Debian's clonezilla (`ocs-sr -q2 -z9p savedisk`: partclone, zstd), then, same
# run, interleaved, page cache dropped before each:
#   import    `drover image import DIR --name NAME` into an empty store (reads every piece,
#             checks partclone's checksums, lays the disk out, captures it: chunked, hashed,
#             compressed, stored)
#   restore   what Clonezilla does with the image: `zstd -dc PIECES | partclone.restore` of the
#             partition into a scratch file (the data written once, nothing stored)
#   ocs-sr    Clonezilla's own `ocs-sr -b restoredisk` onto a loop device (its checks, table
#             and partclone.restore, as a lab admin runs it)
# Seconds per way; medians are reported.
#
# usage: sudo bash bench/clonezilla.sh [RUNS]
#   RUNS  runs per way (default 3)
# Results: a Markdown table on stdout and in bench/out/clonezilla.md; raw rows in
# bench/out/clonezilla.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
OUT=bench/out; W=${BENCH_TMP:-/var/tmp/drover-bench-clonezilla}
mkdir -p "$W" "$OUT"
bash deploy/install-test-deps >/dev/null
[ -n "${DROVER_BIN_DIR:-}" ] || cargo build --release --quiet -p server
DROVER=${DROVER_BIN_DIR:-$PWD/target/release}/drover
export RUST_BACKTRACE=0
LOOPS=()
cleanup() {
  for l in "${LOOPS[@]}"; do
    partx -d "$l" 2>/dev/null || true
    losetup -d "$l" 2>/dev/null || true
  done
}
trap 'cleanup; rm -rf "$W"' EXIT
attach() {
  local l
  l=$(losetup -f --show "$1")
  LOOPS+=("$l")
  # The kernel here does not scan a loop device's partitions by itself.
  partx -a "$l" 2>/dev/null || true
  echo "$l"
}

echo "bench/clonezilla.sh: a 1 GiB GPT disk, 400 MiB of files in its ext4 partition" >&2
python3 bench/gen-tree.py "$W/tree" $((400 << 20)) >/dev/null
truncate -s 1G "$W/disk.img"
sgdisk -o -n1:2048:+960M -t1:8300 "$W/disk.img" >/dev/null
truncate -s 960M "$W/p1.img"
mkfs.ext4 -q -F -d "$W/tree" "$W/p1.img"
dd if="$W/p1.img" of="$W/disk.img" bs=1M seek=1 conv=notrunc status=none
rm -rf "$W/tree" "$W/p1.img"
src=$(attach "$W/disk.img")
mkdir -p "$W/partimag"
ocs-sr -q2 -b -z9p -i 0 -sfsck -scs -senc -p true -or "$W/partimag" savedisk bench "${src#/dev/}" \
  >"$W/savedisk.log" 2>&1 || { tail -20 "$W/savedisk.log" >&2; exit 1; }
IMG="$W/partimag/bench"
pieces=("$IMG/${src#/dev/}p1.ext4-ptcl-img.zst"*)
echo "image: $(du -sh "$IMG" | cut -f1) in $IMG" >&2

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
tsv="$OUT/clonezilla.tsv"
printf 'run\tway\tseconds\n' >"$tsv"
for r in $(seq 1 "$RUNS"); do
  rm -rf "$W/data"
  drop; t0=$(now)
  "$DROVER" --data-dir "$W/data" image import "$IMG" --name bench >/dev/null 2>&1
  t=$(echo "$(now) - $t0" | bc); printf '%s\timport\t%.2f\n' "$r" "$t" | tee -a "$tsv" >&2

  rm -f "$W/target.img"; truncate -s 960M "$W/target.img"
  drop; t0=$(now)
  zstd -dc "${pieces[@]}" | partclone.restore -q -s - -O "$W/target.img" >/dev/null 2>&1
  sync
  t=$(echo "$(now) - $t0" | bc); printf '%s\trestore\t%.2f\n' "$r" "$t" | tee -a "$tsv" >&2

  rm -f "$W/ocs-target.img"; truncate -s 1G "$W/ocs-target.img"
  tgt=$(attach "$W/ocs-target.img")
  drop; t0=$(now)
  ocs-sr -b -scr -p true -or "$W/partimag" restoredisk bench "${tgt#/dev/}" \
    >"$W/restoredisk.log" 2>&1 || { tail -20 "$W/restoredisk.log" >&2; exit 1; }
  t=$(echo "$(now) - $t0" | bc); printf '%s\tocs-sr\t%.2f\n' "$r" "$t" | tee -a "$tsv" >&2
  partx -d "$tgt" 2>/dev/null || true; losetup -d "$tgt"
done

python3 - "$tsv" <<'EOF' | tee "$OUT/clonezilla.md"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
med = {w: statistics.median(float(r["seconds"]) for r in rows if r["way"] == w)
       for w in ("import", "restore", "ocs-sr")}
print("| way | median s |")
print("|---|---|")
for w, v in med.items():
    print(f"| {w} | {v:.2f} |")
print(f"\nimport / partclone.restore: {med['import'] / med['restore']:.2f}x; "
      f"import / ocs-sr restoredisk: {med['import'] / med['ocs-sr']:.2f}x")
EOF
