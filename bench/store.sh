#!/usr/bin/env bash
# Image stores (issue 22): capture and restore of the same ext4 into a local directory and into
# an S3 bucket (SeaweedFS `weed mini` on this machine, inside a network namespace of its own),
# each with and without encryption at rest. Same run, interleaved, page cache dropped before
# every timed command. The CPU seconds SeaweedFS spends during each S3 capture are recorded:
# here the object store shares the machine's cores with drover, which a real deployment's
# storage does not.
#
# With PIN=1 the store gets a CPU of its own, as it would on its own host: SeaweedFS runs on CPU 1
# only and every drover command (local and S3 alike) on CPU 0 only.
#
# usage: sudo [PIN=1] bash bench/store.sh [RUNS]
#   RUNS  runs per way (default 3); medians are reported
# Results: a Markdown table on stdout and in bench/out/store.md; raw rows in bench/out/store.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
OUT=bench/out; W=${BENCH_TMP:-/var/tmp/drover-bench-store}
MIB=${MIB:-600}
mkdir -p "$W" "$OUT"
bash deploy/install-test-deps >/dev/null
[ -n "${DROVER_BIN_DIR:-}" ] || cargo build --release --quiet -p server
DROVER=${DROVER_BIN_DIR:-$PWD/target/release}/drover
NS=drover-bench-store
cleanup() {
  ip netns pids $NS 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  ip netns del $NS 2>/dev/null || true
}
trap 'cleanup; rm -rf "$W"' EXIT
cleanup
ip netns add $NS
ip -n $NS link set lo up
in_ns() { ip netns exec $NS "$@"; }
STORE_CPU=(); DROVER_CPU=()
if [ "${PIN:-0}" = 1 ]; then STORE_CPU=(taskset -c 1); DROVER_CPU=(taskset -c 0); fi
run_drover() { in_ns "${DROVER_CPU[@]}" "$DROVER" "$@"; }

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret
export AWS_ENDPOINT_URL=http://127.0.0.1:8333 RUST_BACKTRACE=0
mkdir -p "$W/weed"
in_ns "${STORE_CPU[@]}" weed mini -dir="$W/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
  -admin.ui=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 -bucket=images \
  >"$W/weed.log" 2>&1 &
for _ in $(seq 120); do
  in_ns "$DROVER" image list --store s3://images/probe >/dev/null 2>&1 && break
  sleep 0.5
done
WEED_PID=$(ip netns pids $NS | head -1)

echo "bench/store.sh: a ${MIB} MiB file tree in a 1 GiB ext4" >&2
python3 bench/gen-tree.py "$W/tree" $((MIB << 20)) >/dev/null
truncate -s 1G "$W/src.img"
mkfs.ext4 -q -F -d "$W/tree" "$W/src.img"
rm -rf "$W/tree"
"$DROVER" image keygen "$W/key" 2>/dev/null

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
now() { date +%s.%N; }
TSV=$OUT/store.tsv
echo -e "run\tstore\tkey\tcapture_s\trestore_s\tweed_cpu_s\tstored_bytes" >"$TSV"
for run in $(seq "$RUNS"); do
  for store in local s3; do
    for key in plain encrypted; do
      case $store in
        local) url=$W/store-$run-$key ;;
        s3) url=s3://images/run$run-$key ;;
      esac
      args=(--store "$url")
      [ "$key" = encrypted ] && args+=(--encrypt-key-file "$W/key")
      sync; echo 3 >/proc/sys/vm/drop_caches
      w0=$(cpu_ticks "$WEED_PID"); t0=$(now)
      run_drover image capture "$W/src.img" --name bench "${args[@]}" >/dev/null 2>&1
      t1=$(now); w1=$(cpu_ticks "$WEED_PID")
      stored=$(in_ns "$DROVER" --json image inspect bench "${args[@]}" 2>/dev/null |
        python3 -c 'import json,sys; m=json.load(sys.stdin); print(m.get("stored_bytes", 0))' 2>/dev/null || echo 0)
      rm -f "$W/out.img"; truncate -s 1G "$W/out.img"
      sync; echo 3 >/proc/sys/vm/drop_caches
      t2=$(now)
      run_drover image restore bench "$W/out.img" "${args[@]}" >/dev/null 2>&1
      t3=$(now)
      cmp -s "$W/src.img" "$W/out.img" || { echo "restore from $url differs" >&2; exit 1; }
      weed_s=$(echo "($w1 - $w0) / 100" | bc -l)
      [ "$store" = local ] && weed_s=0
      printf '%s\t%s\t%s\t%.3f\t%.3f\t%.2f\t%s\n' "$run" "$store" "$key" \
        "$(echo "$t1 - $t0" | bc -l)" "$(echo "$t3 - $t2" | bc -l)" "$weed_s" "$stored" >>"$TSV"
      [ "$store" = local ] && rm -rf "$url"
    done
  done
done

python3 - "$TSV" "$MIB" <<'EOF' | tee "$OUT/store.md"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def med(store, key, col):
    return statistics.median(float(r[col]) for r in rows if r["store"] == store and r["key"] == key)
import os
pinned = ", store on CPU 1, drover on CPU 0" if os.environ.get("PIN") == "1" else ""
print(f"| {sys.argv[2]} MiB of files, 1 GiB ext4 (medians of {len(rows)//4}{pinned}) | capture s | restore s | SeaweedFS CPU s during capture |")
print("|---|---|---|---|")
for store in ("local", "s3"):
    for key in ("plain", "encrypted"):
        print(f"| {store}, {key} | {med(store,key,'capture_s'):.2f} | {med(store,key,'restore_s'):.2f} | {med(store,key,'weed_cpu_s'):.2f} |")
lc, sc = med("local","plain","capture_s"), med("s3","plain","capture_s")
lr, sr = med("local","plain","restore_s"), med("s3","plain","restore_s")
print()
print(f"S3 / local throughput: capture {lc/sc:.2f}x, restore {lr/sr:.2f}x")
for store in ("local", "s3"):
    c = med(store,"encrypted","capture_s") / med(store,"plain","capture_s")
    r = med(store,"encrypted","restore_s") / med(store,"plain","restore_s")
    print(f"encryption cost ({store}): capture {c:.2f}x, restore {r:.2f}x the plain time")
EOF
