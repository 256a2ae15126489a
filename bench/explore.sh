#!/usr/bin/env bash
# Taking one file out of an image (issue 23): a 100 MiB file inside the ext4 partition of a GPT
# disk image, read three ways, same run, interleaved, page cache dropped before each:
#   get      `drover image get IMAGE p1:/big.bin -` (no mount, no root)
#   mount    `drover image mount IMAGE DIR`, `mount -o ro,loop DIR/p1`, read the file
#   restore  what a Clonezilla user does (its images cannot be opened): partclone.restore of
#            the partition's zstd-compressed partclone image into a scratch file, loop-mount,
#            read the file
# For each: seconds from the command's start to the file's first byte, and the file's bytes
# over the seconds from start to its last byte (MiB/s).
#
# usage: sudo bash bench/explore.sh [RUNS]
#   RUNS  runs per way (default 5); medians are reported
# Results: a Markdown table on stdout and in bench/out/explore.md; raw rows in
# bench/out/explore.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}
OUT=bench/out; W=${BENCH_TMP:-/var/tmp/drover-bench-explore}
mkdir -p "$W" "$OUT"
bash deploy/install-test-deps >/dev/null
[ -n "${DROVER_BIN_DIR:-}" ] || cargo build --release --quiet -p server
DROVER=${DROVER_BIN_DIR:-$PWD/target/release}/drover
export RUST_BACKTRACE=0
cleanup() {
  umount -l "$W/files" 2>/dev/null || true
  umount -l "$W/image" 2>/dev/null || true
  pkill -f "drover --data-dir $W/data image mount" 2>/dev/null || true
}
trap 'cleanup; rm -rf "$W"' EXIT
cleanup
mkdir -p "$W/image" "$W/files"

echo "bench/explore.sh: a 100 MiB file among 200 MiB of others in a 512 MiB ext4 partition" >&2
python3 bench/gen-tree.py "$W/tree" $((200 << 20)) >/dev/null
head -c $((100 << 20)) /dev/urandom >"$W/tree/big.bin"
truncate -s 520M "$W/disk.img"
sgdisk -o -n1:2048:+512M -t1:8300 "$W/disk.img" >/dev/null
truncate -s 512M "$W/p1.img"
mkfs.ext4 -q -F -d "$W/tree" "$W/p1.img"
dd if="$W/p1.img" of="$W/disk.img" bs=1M seek=1 conv=notrunc status=none
want=$(sha256sum <"$W/tree/big.bin" | cut -d' ' -f1)
rm -rf "$W/tree"
"$DROVER" --data-dir "$W/data" image capture "$W/disk.img" --name bench >/dev/null
# Clonezilla's way of storing the partition: partclone, zstd-compressed.
partclone.ext4 -q -c -s "$W/p1.img" -o - 2>/dev/null | zstd -q -T0 -3 >"$W/p1.ptcl.zst"
rm -f "$W/p1.img"

# Reads a stream, prints "first_byte_s total_s sha256" measured from $T0 (epoch seconds).
measure() {
  python3 -c '
import hashlib, sys, time
t0 = float(sys.argv[1]); h = hashlib.sha256(); first = None
f = sys.stdin.buffer
while True:
    b = f.read(1 << 20)
    if not b: break
    if first is None: first = time.time() - t0
    h.update(b)
print(f"{first:.3f} {time.time() - t0:.3f} {h.hexdigest()}")' "$1"
}
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }

run_get() {
  drop; local t0; t0=$(date +%s.%N)
  "$DROVER" --data-dir "$W/data" image get bench p1:/big.bin - | measure "$t0"
}
run_mount() {
  drop; local t0; t0=$(date +%s.%N)
  "$DROVER" --data-dir "$W/data" image mount bench "$W/image" 2>/dev/null &
  local pid=$!
  while [ ! -e "$W/image/p1" ]; do sleep 0.01; done
  mount -o ro,loop "$W/image/p1" "$W/files"
  measure "$t0" <"$W/files/big.bin"
  umount "$W/files"; umount "$W/image"; wait "$pid"
}
run_restore() {
  drop; local t0; t0=$(date +%s.%N)
  rm -f "$W/scratch.img"; truncate -s 512M "$W/scratch.img"  # the partition restored into
  zstd -q -dc "$W/p1.ptcl.zst" | partclone.ext4 -q -r -s - -O "$W/scratch.img" 2>/dev/null
  mount -o ro,loop "$W/scratch.img" "$W/files"
  measure "$t0" <"$W/files/big.bin"
  umount "$W/files"; rm -f "$W/scratch.img"
}

TSV=$OUT/explore.tsv
echo -e "run\tway\tfirst_byte_s\ttotal_s\tmib_per_s" >"$TSV"
for r in $(seq "$RUNS"); do
  for way in get mount restore; do
    read -r first total sum < <("run_$way")
    [ "$sum" = "$want" ] || { echo "$way: the file read back differs" >&2; exit 1; }
    echo -e "$r\t$way\t$first\t$total\t$(echo "scale=1; 100 / $total" | bc)" >>"$TSV"
    echo "run $r $way: first byte ${first}s, whole file ${total}s" >&2
  done
done

python3 - "$TSV" <<'E' | tee "$OUT/explore.md"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
med = lambda way, k: statistics.median(float(r[k]) for r in rows if r["way"] == way)
print("| way | first byte (s) | whole 100 MiB file (s) | MiB/s |")
print("|---|---|---|---|")
for way in ["get", "mount", "restore"]:
    print(f"| {way} | {med(way, 'first_byte_s'):.2f} | {med(way, 'total_s'):.2f} | {100 / med(way, 'total_s'):.0f} |")
g, r = med("get", "first_byte_s"), med("restore", "first_byte_s")
print(f"\nfirst byte: get is {r / g:.0f}x sooner than restoring with partclone; "
      f"mount+loop {r / med('mount', 'first_byte_s'):.0f}x")
E
