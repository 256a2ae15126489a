#!/usr/bin/env bash
# Restoring onto a disk twice the golden one's, the root partition and its ext4 grown to the new
# disk's end: drover (`drover image restore`, which grows by default) against Clonezilla's way
# (the partition table written and the last partition grown with sgdisk, each partition
# restored with `zstd -dc | partclone -r`, then `e2fsck -f` and `resize2fs`), in one run.
# Then one image onto three disks of the golden size at once (`drover image restore golden
# T1 T2 T3`, each read back) against three restores one after the other. Then onto a disk of
# two thirds the golden one's, the root shrunk: drover (which finds the minimum, shrinks and
# copies on its own) against the manual way Clonezilla leaves an admin (the smaller table
# written with sgdisk, the ESP restored with partclone, the root restored with partclone into
# a full-size scratch file, `e2fsck -f` + `resize2fs` to the new size, then `dd` onto the
# target), with a plain restore onto a disk of the golden size as the baseline.
#
# usage: sudo bash bench/layout.sh [RUNS]     (root: loop devices and dropping caches)
# The golden disk: 2 GiB GPT, a 256 MiB FAT32 ESP and an ext4 root a third full of mixed files
# (resize2fs -P asks for about 1.6 times the used blocks: a fuller root does not fit 0.67x).
# Results: a Markdown table on stdout and in bench/out/layout.md; medians of RUNS (default 3),
# page cache dropped before every timed command. Both results pass e2fsck -fn and fsck.vfat -n
# and have their root ext4 filling the grown partition.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
OUT=bench/out; W=$OUT/layout
mkdir -p "$W"
bash deploy/install-test-deps >/dev/null
cargo build --release --quiet -p server
DROVER=$PWD/target/release/drover
SIZE=$((2 << 30)); BIG=$((2 * SIZE)); SMALL=$((SIZE * 2 / 3 >> 20 << 20))

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
t() { local v=$1; shift; drop; /usr/bin/time -f "%e" -o "$W/time" "$@" >/dev/null 2>"$W/stderr" || { cat "$W/stderr" >&2; exit 1; }; printf -v "$v" '%s' "$(tail -1 "$W/time")"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
part() { sgdisk -i "$2" "$1" | awk -v k="$3" '$0 ~ k {print $3}'; }   # disk N "First|Last"

echo "== building the golden disk" >&2
G=$W/golden.img
rm -f "$G"; truncate -s "$SIZE" "$G"
sgdisk -o -n1:2048:+256M -t1:EF00 -n2:0:0 -t2:8300 "$G" >/dev/null
s1=$(part "$G" 1 First); l1=$(part "$G" 1 Last); s2=$(part "$G" 2 First); l2=$(part "$G" 2 Last)
rm -rf "$W/tree"; python3 bench/gen-tree.py "$W/tree" $(( (l2 - s2) * 512 * 35 / 100 )) 7 >/dev/null
rm -f "$W/esp.img" "$W/root.img"
truncate -s $(( (l1 - s1 + 1) * 512 )) "$W/esp.img"; mkfs.vfat -F 32 -n ESP "$W/esp.img" >/dev/null
mcopy -s -i "$W/esp.img" bench/gen-tree.py ::/
truncate -s $(( (l2 - s2 + 1) * 512 )) "$W/root.img"; mkfs.ext4 -q -F -d "$W/tree" "$W/root.img"
dd if="$W/esp.img" of="$G" bs=1M seek=$((s1 * 512)) oflag=seek_bytes conv=notrunc status=none
dd if="$W/root.img" of="$G" bs=1M seek=$((s2 * 512)) oflag=seek_bytes conv=notrunc status=none
rm -f "$W/esp.img" "$W/root.img"

# The images: drover's, and Clonezilla's (the GPT saved by sgdisk, a partclone image of each
# partition compressed with zstd, as Clonezilla stores them).
rm -rf "$W/store" "$W/d"
"$DROVER" --data-dir "$W/d" image capture "$G" --name golden --store "$W/store" >/dev/null
sgdisk -b "$W/gpt.bak" "$G" >/dev/null
lo=$(losetup -f --show -o $((s1 * 512)) --sizelimit $(( (l1 - s1 + 1) * 512 )) "$G")
partclone.vfat -q -c -s "$lo" -o - 2>/dev/null | zstd -3 -T0 -q -f -o "$W/p1.zst"; losetup -d "$lo"
lo=$(losetup -f --show -o $((s2 * 512)) --sizelimit $(( (l2 - s2 + 1) * 512 )) "$G")
partclone.ext4 -q -c -s "$lo" -o - 2>/dev/null | zstd -3 -T0 -q -f -o "$W/p2.zst"; losetup -d "$lo"

# Clonezilla's way onto the larger target T: the table, the last partition grown to the end,
# each partition restored, then the ext4 checked and grown.
clonezilla() {
  local T=$1
  sgdisk -l "$W/gpt.bak" "$T" >/dev/null && sgdisk -e "$T" >/dev/null
  sgdisk -d 2 -n "2:$s2:0" -t 2:8300 "$T" >/dev/null
  local e2; e2=$(part "$T" 2 Last)
  local a b
  a=$(losetup -f --show -o $((s1 * 512)) --sizelimit $(( (l1 - s1 + 1) * 512 )) "$T")
  zstd -dc "$W/p1.zst" | partclone.vfat -q -r -s - -o "$a" 2>/dev/null
  b=$(losetup -f --show -o $((s2 * 512)) --sizelimit $(( (e2 - s2 + 1) * 512 )) "$T")
  zstd -dc "$W/p2.zst" | partclone.ext4 -q -r -s - -o "$b" 2>/dev/null
  e2fsck -f -y "$b" >/dev/null 2>&1 || [ $? -le 1 ]
  resize2fs "$b" >/dev/null 2>&1
  sync; losetup -d "$a" "$b"
}
export -f clonezilla part; export W s1 l1 s2

# The manual way onto the smaller target T: a smaller table, the ESP restored, the root
# restored into a full-size scratch file, checked, shrunk to its new partition and copied over.
shrinkway() {
  local T=$1
  sgdisk -o -n1:2048:+256M -t1:EF00 -n2:0:0 -t2:8300 "$T" >/dev/null
  local e2; e2=$(part "$T" 2 Last)
  local a
  a=$(losetup -f --show -o $((s1 * 512)) --sizelimit $(( (l1 - s1 + 1) * 512 )) "$T")
  zstd -dc "$W/p1.zst" | partclone.vfat -q -r -s - -o "$a" 2>/dev/null
  losetup -d "$a"
  rm -f "$W/scratch.img"; truncate -s $(( (l2 - s2 + 1) * 512 )) "$W/scratch.img"
  zstd -dc "$W/p2.zst" | partclone.ext4 -q -r -s - --overwrite "$W/scratch.img" 2>/dev/null
  e2fsck -f -y "$W/scratch.img" >/dev/null 2>&1 || [ $? -le 1 ]
  resize2fs "$W/scratch.img" $(( (e2 - s2 + 1) * 512 / 4096 )) >/dev/null 2>&1
  dd if="$W/scratch.img" of="$T" bs=4M seek=$((s2 * 512)) oflag=seek_bytes count=$(( (e2 - s2 + 1) * 512 )) iflag=count_bytes conv=notrunc,sparse status=none
  rm -f "$W/scratch.img"; sync
}
export -f shrinkway; export l2

rm -f "$W"/*.times
for i in $(seq 1 "$RUNS"); do
  echo "== run $i" >&2
  rm -f "$W/t.img"; truncate -s "$BIG" "$W/t.img"
  t a "$DROVER" --data-dir "$W/d" image restore golden "$W/t.img" --store "$W/store"
  echo "$a" >> "$W/drover.times"
  rm -f "$W/c.img"; truncate -s "$BIG" "$W/c.img"
  t a bash -c "clonezilla '$W/c.img'"
  echo "$a" >> "$W/clonezilla.times"
  # Alternating which goes first, so neither always follows the other's writeback.
  order=(three seq); ((i % 2)) || order=(seq three)
  for mode in "${order[@]}"; do
    rm -f "$W"/m?.img; for k in 1 2 3; do truncate -s "$SIZE" "$W/m$k.img"; done
    if [ "$mode" = three ]; then
      t a "$DROVER" --data-dir "$W/d" image restore golden "$W/m1.img" "$W/m2.img" "$W/m3.img" --store "$W/store"
    else
      t a bash -c "for k in 1 2 3; do '$DROVER' --data-dir '$W/d' image restore golden '$W/m'\$k.img --store '$W/store' || exit 1; done"
    fi
    echo "$a" >> "$W/$mode.times"
  done
  rm -f "$W/s.img"; truncate -s "$SMALL" "$W/s.img"
  t a "$DROVER" --data-dir "$W/d" image restore golden "$W/s.img" --store "$W/store" --scratch "$W"
  echo "$a" >> "$W/shrink.times"
  rm -f "$W/sc.img"; truncate -s "$SMALL" "$W/sc.img"
  t a bash -c "shrinkway '$W/sc.img'"
  echo "$a" >> "$W/shrinkway.times"
  rm -f "$W/same.img"; truncate -s "$SIZE" "$W/same.img"
  t a "$DROVER" --data-dir "$W/d" image restore golden "$W/same.img" --store "$W/store"
  echo "$a" >> "$W/same.times"
done
for k in 1 2 3; do cmp "$W/m1.img" "$W/m$k.img"; done
rm -f "$W"/m?.img

# Both results (the last run's): checkers clean, the root ext4 filling its grown partition.
check() { # disk
  local d=$1 f l b
  f=$(part "$d" 2 First); l=$(part "$d" 2 Last)
  b=$(losetup -f --show -o $((f * 512)) --sizelimit $(( (l - f + 1) * 512 )) "$d")
  local ok="e2fsck clean"; e2fsck -fn "$b" >/dev/null 2>&1 || ok="e2fsck FAILS"
  local blocks bs
  blocks=$(dumpe2fs -h "$b" 2>/dev/null | awk -F: '/^Block count/ {print $2+0}')
  bs=$(dumpe2fs -h "$b" 2>/dev/null | awk -F: '/^Block size/ {print $2+0}')
  losetup -d "$b"
  b=$(losetup -f --show -o $((s1 * 512)) --sizelimit $(( (l1 - s1 + 1) * 512 )) "$d")
  fsck.vfat -n "$b" >/dev/null 2>&1 || ok="$ok, fsck.vfat FAILS"
  losetup -d "$b"
  echo "$ok; root partition $(( (l - f + 1) * 512 >> 20 )) MiB, its ext4 $(( blocks * bs >> 20 )) MiB"
}
dm=$(median < "$W/drover.times"); cm=$(median < "$W/clonezilla.times")
used=$("$DROVER" --json --data-dir "$W/d" image inspect golden --store "$W/store" | python3 -c 'import json,sys; print(json.load(sys.stdin)["used_bytes"] >> 20)')
{
  echo "| restore onto a 2x disk, root grown ($used MiB used, medians of $RUNS) | seconds | result |"
  echo "|---|---|---|"
  echo "| drover image restore (grows by default) | $dm | $(check "$W/t.img") |"
  echo "| sgdisk + partclone -r (zstd) + e2fsck -f + resize2fs | $cm | $(check "$W/c.img") |"
  echo "| ratio drover / Clonezilla's way | $(awk -v a="$dm" -v b="$cm" 'BEGIN {printf "%.2fx", a / b}') | |"
  tm=$(median < "$W/three.times"); sm=$(median < "$W/seq.times")
  echo
  echo "| one image to 3 disks of the golden size (medians of $RUNS) | seconds |"
  echo "|---|---|"
  echo "| drover image restore golden T1 T2 T3 (one read, each read back) | $tm |"
  echo "| 3 x drover image restore, one after the other | $sm |"
  echo "| ratio at once / one after the other | $(awk -v a="$tm" -v b="$sm" 'BEGIN {printf "%.2fx", a / b}') |"
  km=$(median < "$W/shrink.times"); wm=$(median < "$W/shrinkway.times"); bm=$(median < "$W/same.times")
  echo
  echo "| restore onto a 0.67x disk, root shrunk ($used MiB used, medians of $RUNS) | seconds | result |"
  echo "|---|---|---|"
  echo "| drover image restore (finds the minimum, shrinks, copies) | $km | $(check "$W/s.img") |"
  echo "| sgdisk + partclone -r to scratch + e2fsck -f + resize2fs + dd | $wm | $(check "$W/sc.img") |"
  echo "| drover image restore onto a disk of the golden size (baseline) | $bm | |"
  echo "| ratio drover / the manual way | $(awk -v a="$km" -v b="$wm" 'BEGIN {printf "%.2fx", a / b}') | |"
  echo "| ratio drover shrunk / drover same size | $(awk -v a="$km" -v b="$bm" 'BEGIN {printf "%.2fx", a / b}') | |"
} | tee "$OUT/layout.md"
rm -f "$W/t.img" "$W/c.img" "$W/s.img" "$W/sc.img" "$W/same.img"
