#!/usr/bin/env bash
# drover capture/restore against partclone + zstd on 2 GiB ext4 and NTFS filesystems ~60% full
# of mixed files, in one run; then recapture after changing 1% of the files.
#
# usage: sudo bash bench/imaging.sh [RUNS]     (root: loop/FUSE mounts and dropping caches)
# Results: a Markdown table on stdout and in bench/out/results.md. Medians of RUNS (default 3);
# page cache dropped before every timed command, so both tools read from disk.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
OUT=bench/out; W=$OUT/work
mkdir -p "$W"
bash deploy/install-test-deps >/dev/null
cargo build --release --quiet -p server
DROVER=$PWD/target/release/drover
SIZE=$((2 << 30))
FILL=$((SIZE * 58 / 100))   # file bytes; metadata brings the filesystem to ~60%

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# t OUTVAR cmd...: runs cmd under /usr/bin/time; sets OUTVAR to "seconds maxrss_kib".
t() { local v=$1; shift; drop; /usr/bin/time -f "%e %M" -o "$W/time" "$@" >/dev/null 2>"$W/stderr" || { cat "$W/stderr" >&2; exit 1; }; printf -v "$v" '%s' "$(tail -1 "$W/time")"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

make_fs() { # kind img
  local kind=$1 img=$2
  rm -rf "$W/tree"; python3 bench/gen-tree.py "$W/tree" "$FILL" 7 >/dev/null
  rm -f "$img"; truncate -s "$SIZE" "$img"
  if [ "$kind" = ext4 ]; then
    mkfs.ext4 -q -F -d "$W/tree" "$img"
  else
    mkntfs -Q -F -q "$img"; mkdir -p "$W/mnt"
    ntfs-3g "$img" "$W/mnt"; cp -r "$W/tree/." "$W/mnt/"; sync; umount "$W/mnt"
  fi
}

change_1pct() { # kind img: rewrite 1% of the files (chosen at random) with new contents
  local kind=$1 img=$2
  mkdir -p "$W/mnt"
  if [ "$kind" = ext4 ]; then mount -o loop "$img" "$W/mnt"; else ntfs-3g "$img" "$W/mnt"; fi
  python3 - "$W/mnt" <<'PY'
import os, random, sys
root = sys.argv[1]; rng = random.Random(99)
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".dat"))
pick = rng.sample(files, max(1, len(files) // 100))
for p in pick:
    n = os.path.getsize(p)
    with open(p, "r+b") as f:
        f.write(rng.randbytes(n))
print(f"changed {len(pick)} of {len(files)} files", file=sys.stderr)
PY
  sync; umount "$W/mnt"
}

declare -A R
rm -f "$W"/*.dc "$W"/*.pc "$W"/*.pct "$W"/*.dr "$W"/*.pr
for kind in ext4 ntfs; do
  img=$W/$kind.img
  pc=partclone.$kind; [ "$kind" = ntfs ] || pc=partclone.ext4
  echo "== $kind: building a 2 GiB filesystem ~60% full" >&2
  make_fs "$kind" "$img"
  used=$("$DROVER" --json --data-dir "$W/probe" image capture "$img" --name probe | python3 -c 'import json,sys; print(json.load(sys.stdin)["used_bytes"])')
  rm -rf "$W/probe"
  for i in $(seq 1 "$RUNS"); do
    echo "== $kind run $i" >&2
    rm -rf "$W/store"
    t a "$DROVER" --data-dir "$W/d" image capture "$img" --name b --store "$W/store"
    echo "$a" >> "$W/$kind.dc"
    du -sb "$W/store/chunks" | cut -f1 > "$W/$kind.dsize"
    rm -f "$W/pc.zst"
    t a bash -o pipefail -c "$pc -q -c -s '$img' -o - 2>/dev/null | zstd -3 -q -o '$W/pc.zst'"
    echo "$a" >> "$W/$kind.pc"
    stat -c %s "$W/pc.zst" > "$W/$kind.psize"
    rm -f "$W/pc.zst"
    t a bash -o pipefail -c "$pc -q -c -s '$img' -o - 2>/dev/null | zstd -3 -T0 -q -o '$W/pc.zst'"
    echo "$a" >> "$W/$kind.pct"
    rm -f "$W/target"; truncate -s "$SIZE" "$W/target"
    t a "$DROVER" --data-dir "$W/d" image restore b "$W/target" --store "$W/store"
    echo "$a" >> "$W/$kind.dr"
    rm -f "$W/target"; truncate -s "$SIZE" "$W/target"
    t a bash -o pipefail -c "zstd -dc '$W/pc.zst' | $pc -q -r -s - -O '$W/target' 2>/dev/null"
    echo "$a" >> "$W/$kind.pr"
  done
  # Both restored filesystems pass their checker (the last run's targets).
  fsck=(e2fsck -fn); [ "$kind" = ntfs ] && fsck=(ntfsfix -n)
  check() { if "${fsck[@]}" "$W/target" > "$W/fsck.out" 2>&1; then echo "passes ${fsck[0]}"; else echo "FAILS ${fsck[0]}: $(grep -iE 'bad|error|wrong' "$W/fsck.out" | head -2 | tr '\n' ' ')"; fi; }
  R[$kind.pcfsck]=$(check)
  rm -f "$W/target"; truncate -s "$SIZE" "$W/target"
  "$DROVER" --data-dir "$W/d" image restore b "$W/target" --store "$W/store" >/dev/null
  R[$kind.dfsck]=$(check)
  rm -f "$W/target"
  # Recapture after changing 1% of the files: bytes newly stored / full image.
  change_1pct "$kind" "$img"
  "$DROVER" --json --data-dir "$W/d" image capture "$img" --name b --store "$W/store" > "$W/$kind.re.json"
  R[$kind.re]=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print("%.2f%% (%d of %d bytes, %d of %d chunks)" % (100*j["new_bytes"]/j["stored_bytes"], j["new_bytes"], j["stored_bytes"], j["new_chunks"], j["chunks"]))' "$W/$kind.re.json")
  R[$kind.used]=$used
done

# Memory does not grow with the disk: the same files in an 8 GiB ext4.
rm -rf "$W/tree"; python3 bench/gen-tree.py "$W/tree" "$FILL" 7 >/dev/null
rm -f "$W/big.img"; truncate -s 8G "$W/big.img"; mkfs.ext4 -q -F -d "$W/tree" "$W/big.img"
rm -rf "$W/store"
t a "$DROVER" --data-dir "$W/d" image capture "$W/big.img" --name big --store "$W/store"
R[big.rss]=$(echo "$a" | awk '{print $2/1024}')
rm -rf "$W/target"; truncate -s 8G "$W/target"
t a "$DROVER" --data-dir "$W/d" image restore big "$W/target" --store "$W/store"
R[big.rrss]=$(echo "$a" | awk '{print $2/1024}')
rm -f "$W/big.img" "$W/target"

{
  echo "| | ext4 | ntfs |"
  echo "|---|---|---|"
  row() { printf '| %s | %s | %s |\n' "$1" "$2" "$3"; }
  sec() { awk '{print $1}' "$W/$1.$2" | median; }
  mem() { awk '{print $2/1024}' "$W/$1.$2" | median; }
  row "used bytes (drover)" "${R[ext4.used]}" "${R[ntfs.used]}"
  row "capture s: drover" "$(sec ext4 dc)" "$(sec ntfs dc)"
  row "capture s: partclone \| zstd -3" "$(sec ext4 pc)" "$(sec ntfs pc)"
  row "capture s: partclone \| zstd -3 -T0" "$(sec ext4 pct)" "$(sec ntfs pct)"
  row "restore s: drover" "$(sec ext4 dr)" "$(sec ntfs dr)"
  row "restore s: zstd -d \| partclone -r" "$(sec ext4 pr)" "$(sec ntfs pr)"
  row "image bytes: drover" "$(cat "$W/ext4.dsize")" "$(cat "$W/ntfs.dsize")"
  row "image bytes: partclone + zstd -3" "$(cat "$W/ext4.psize")" "$(cat "$W/ntfs.psize")"
  row "peak RSS MiB: drover capture" "$(mem ext4 dc)" "$(mem ntfs dc)"
  row "peak RSS MiB: drover restore" "$(mem ext4 dr)" "$(mem ntfs dr)"
  row "peak RSS MiB, same files in an 8 GiB ext4: capture / restore" "${R[big.rss]} / ${R[big.rrss]}" ""
  row "restored filesystem: drover" "${R[ext4.dfsck]}" "${R[ntfs.dfsck]}"
  row "restored filesystem: partclone" "${R[ext4.pcfsck]}" "${R[ntfs.pcfsck]}"
  row "recapture after 1% of files changed (new/full)" "${R[ext4.re]}" "${R[ntfs.re]}"
} | tee "$OUT/results.md"
rm -f "$W"/*.dc "$W"/*.pc "$W"/*.pct "$W"/*.dr "$W"/*.pr
