#!/usr/bin/env bash
# drover capture/restore against partclone + zstd on 2 GiB ext4, NTFS, XFS, btrfs and f2fs
# filesystems ~60% full of mixed files, in one run; then recapture after changing 1% of the files
# (not f2fs: this kernel has no f2fs driver to change them with).
#
# usage: sudo bash bench/imaging.sh [RUNS]     (root: loop/FUSE mounts and dropping caches)
#        KINDS="xfs btrfs f2fs" sudo -E bash bench/imaging.sh 3     (only some filesystems)
# Results: a Markdown table on stdout and in bench/out/results.md. Medians of RUNS (default 3);
# page cache dropped before every timed command, so both tools read from disk.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
KINDS=${KINDS:-ext4 ntfs xfs btrfs}
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
  mkdir -p "$W/mnt"
  case $kind in
    ext4) mkfs.ext4 -q -F -d "$W/tree" "$img" ;;
    ntfs) mkntfs -Q -F -q "$img"
          ntfs-3g "$img" "$W/mnt"; cp -r "$W/tree/." "$W/mnt/"; sync; umount "$W/mnt" ;;
    xfs|btrfs) "mkfs.$kind" -q -f "$img"
          mount -o loop "$img" "$W/mnt"; cp -r "$W/tree/." "$W/mnt/"; sync; umount "$W/mnt" ;;
    f2fs) mkfs.f2fs -q -f "$img"; sload.f2fs -f "$W/tree" "$img" >/dev/null ;;
  esac
}

change_1pct() { # kind img: rewrite 1% of the files (chosen at random) with new contents
  local kind=$1 img=$2
  mkdir -p "$W/mnt"
  if [ "$kind" = ntfs ]; then ntfs-3g "$img" "$W/mnt"; else mount -o loop "$img" "$W/mnt"; fi
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
sec() { awk '{print $1}' "$W/$1.$2" | median; }
mem() { awk '{print $2/1024}' "$W/$1.$2" | median; }
c_used() { echo "${R[$1.used]}"; }
c_dc() { sec "$1" dc; }
c_pc() { sec "$1" pc; }
c_pct() { sec "$1" pct; }
c_dr() { sec "$1" dr; }
c_pr() { sec "$1" pr; }
c_dsize() { cat "$W/$1.dsize"; }
c_psize() { cat "$W/$1.psize"; }
c_dcm() { mem "$1" dc; }
c_drm() { mem "$1" dr; }
c_dfsck() { echo "${R[$1.dfsck]}"; }
c_pcfsck() { echo "${R[$1.pcfsck]}"; }
c_re() { echo "${R[$1.re]}"; }
rm -f "$W"/*.dc "$W"/*.pc "$W"/*.pct "$W"/*.dr "$W"/*.pr
for kind in $KINDS; do
  img=$W/$kind.img
  pc=partclone.$kind
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
  case $kind in
    ext4) fsck=(e2fsck -fn) ;; ntfs) fsck=(ntfsfix -n) ;;
    xfs) fsck=(xfs_repair -n) ;; btrfs) fsck=(btrfs check --readonly) ;;
    f2fs) fsck=(fsck.f2fs -f --dry-run) ;;
  esac
  # fsck.f2fs may exit 0 after finding problems: its check lines must not say Fail.
  check() { if "${fsck[@]}" "$W/target" > "$W/fsck.out" 2>&1 && ! grep -q '\[Fail\]' "$W/fsck.out"; then echo "passes ${fsck[*]}"; else echo "FAILS ${fsck[*]}: $(grep -iE 'bad|error|wrong' "$W/fsck.out" | head -2 | tr '\n' ' ')"; fi; }
  R[$kind.pcfsck]=$(check)
  rm -f "$W/target"; truncate -s "$SIZE" "$W/target"
  "$DROVER" --data-dir "$W/d" image restore b "$W/target" --store "$W/store" >/dev/null
  R[$kind.dfsck]=$(check)
  rm -f "$W/target"
  R[$kind.used]=$used
  # Recapture after changing 1% of the files: bytes newly stored / full image.
  if [ "$kind" = f2fs ]; then R[$kind.re]="n/a (no f2fs driver)"; continue; fi
  change_1pct "$kind" "$img"
  "$DROVER" --json --data-dir "$W/d" image capture "$img" --name b --store "$W/store" > "$W/$kind.re.json"
  R[$kind.re]=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print("%.2f%% (%d of %d bytes, %d of %d chunks)" % (100*j["new_bytes"]/j["stored_bytes"], j["new_bytes"], j["stored_bytes"], j["new_chunks"], j["chunks"]))' "$W/$kind.re.json")
done

# Memory does not grow with the disk: the same files in an 8 GiB ext4.
if [[ " $KINDS " == *" ext4 "* ]]; then
rm -rf "$W/tree"; python3 bench/gen-tree.py "$W/tree" "$FILL" 7 >/dev/null
rm -f "$W/big.img"; truncate -s 8G "$W/big.img"; mkfs.ext4 -q -F -d "$W/tree" "$W/big.img"
rm -rf "$W/store"
t a "$DROVER" --data-dir "$W/d" image capture "$W/big.img" --name big --store "$W/store"
R[big.rss]=$(echo "$a" | awk '{print $2/1024}')
rm -rf "$W/target"; truncate -s 8G "$W/target"
t a "$DROVER" --data-dir "$W/d" image restore big "$W/target" --store "$W/store"
R[big.rrss]=$(echo "$a" | awk '{print $2/1024}')
rm -f "$W/big.img" "$W/target"
fi

{
  # One column per filesystem: row LABEL FN, where FN KIND prints the cell.
  row() { local label=$1 fn=$2 k; printf '| %s |' "$label"; for k in $KINDS; do printf ' %s |' "$($fn "$k")"; done; echo; }
  printf '| |'; for k in $KINDS; do printf ' %s |' "$k"; done; echo
  printf '|---|'; for k in $KINDS; do printf -- '---|'; done; echo
  row "used bytes (drover)" c_used
  row "capture s: drover" c_dc
  row "capture s: partclone \| zstd -3" c_pc
  row "capture s: partclone \| zstd -3 -T0" c_pct
  row "restore s: drover" c_dr
  row "restore s: zstd -d \| partclone -r" c_pr
  row "image bytes: drover" c_dsize
  row "image bytes: partclone + zstd -3" c_psize
  row "peak RSS MiB: drover capture" c_dcm
  row "peak RSS MiB: drover restore" c_drm
  row "restored filesystem: drover" c_dfsck
  row "restored filesystem: partclone" c_pcfsck
  row "recapture after 1% of files changed (new/full)" c_re
  if [ -n "${R[big.rss]:-}" ]; then
    echo; echo "peak RSS MiB, same files in an 8 GiB ext4: capture ${R[big.rss]} / restore ${R[big.rrss]}"
  fi
} | tee "$OUT/results.md"
rm -f "$W"/*.dc "$W"/*.pc "$W"/*.pct "$W"/*.dr "$W"/*.pr
