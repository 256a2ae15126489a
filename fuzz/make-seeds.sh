#!/usr/bin/env bash
# Regenerates the seed inputs of the fuzz corpus from the real mkfs tools: small filesystems,
# partitioned disks holding them, and the manifests drover writes for them. Inputs found by
# fuzzing are kept beside these seeds in fuzz/corpus/TARGET/. The XFS seeds (seed-xfs-v4, -v5:
# mkfs.xfs makes nothing under 300 MB) are built byte by byte by imaging's XFS tests:
# `DROVER_WRITE_SEEDS=1 cargo test -p imaging xfs` rewrites them.
set -euo pipefail
cd "$(dirname "$0")"
D=$(mktemp -d); trap 'rm -rf "$D"' EXIT
C=corpus
mkdir -p $C/fs_readers $C/table $C/manifest
mk() { truncate -s "$2" "$D/$1"; }

mk ext2.img 128K;  mkfs.ext2 -q -F -b 1024 -N 16 "$D/ext2.img"
mk ext4.img 512K;  mkfs.ext4 -q -F -b 1024 -N 16 -O metadata_csum,64bit,flex_bg "$D/ext4.img"
mk ext4mbg.img 512K; mkfs.ext4 -q -F -b 1024 -N 16 -O meta_bg,^resize_inode "$D/ext4mbg.img"
mk fat12.img 160K; mkfs.vfat -F 12 "$D/fat12.img" >/dev/null
echo hello > "$D/hello.txt"; mcopy -i "$D/fat12.img" "$D/hello.txt" ::/
mk fat16.img 4200K; mkfs.vfat -F 16 -s 1 "$D/fat16.img" >/dev/null
mk exfat.img 2M;   mkfs.exfat -b 4096 "$D/exfat.img" >/dev/null
mk ntfs.img 2M;    mkntfs -Q -F "$D/ntfs.img" >/dev/null 2>&1
mk swap.img 64K;   mkswap "$D/swap.img" >/dev/null
for f in ext2 ext4 ext4mbg fat12 fat16 exfat ntfs swap; do cp "$D/$f.img" "$C/fs_readers/seed-$f"; done

mk mbr.img 3M
printf 'label: dos\nstart=8, size=1024, type=83\nsize=1024, type=5\nsize=400, type=c\n' | sfdisk -q "$D/mbr.img"
dd if="$D/ext2.img" of="$D/mbr.img" bs=512 seek=8 conv=notrunc status=none
cp "$D/mbr.img" $C/table/seed-mbr
mk gpt.img 3M
sgdisk -o -a 1 -n1:34:+256K -t1:8300 -n2:0:+160K -t2:0700 "$D/gpt.img" >/dev/null
dd if="$D/ext2.img" of="$D/gpt.img" bs=512 seek=34 conv=notrunc status=none
cp "$D/gpt.img" $C/table/seed-gpt
cp "$D/fat12.img" $C/table/seed-bare-fat12

DROVER=${DROVER:-../target/debug/drover}
for f in ext2.img mbr.img gpt.img; do
  "$DROVER" --data-dir "$D/data" image capture "$D/$f" --name "$f" --chunk-size 64K >/dev/null 2>&1
done
for m in "$D"/data/images/manifests/*.json; do cp "$m" "$C/manifest/seed-$(basename "$m" .json | cut -c1-12)"; done
echo "seeds written to $(pwd)/$C"
