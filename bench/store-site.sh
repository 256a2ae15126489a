#!/usr/bin/env bash
# A site's server on a shared object store (issue 22): the bytes it reads from the bucket to
# deploy one image to 40 machines. An image is captured into an S3 bucket (SeaweedFS `weed mini`)
# by one drover; then, per case, a fresh `drover serve` (new database, empty cache: a second
# server that never saw the capture) on the same bucket deploys it to 40 agents in network
# namespaces on a bridge, its link shaped with tc tbf. Its `GET /api/v1/store` counters give the
# chunk objects and bytes read from the bucket, compared with the image's stored size.
#
# Cases: multicast and unicast, each with the server's chunk cache (the default) and without
# (`--cache-size 0`).
#
# usage: sudo bash bench/store-site.sh [RUNS]
#   RUNS  runs per case (default 1; the counts hardly vary, the times do)
# Results: a Markdown table on stdout and in bench/out/store-site.md; raw rows in
# bench/out/store-site.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-1}
OUT=bench/out; W=${BENCH_TMP:-/dev/shm/drover-bench-site}
N=${AGENTS:-40}; RATE=${RATE:-300mbit}
mkdir -p "$W" "$OUT"
bash deploy/install-test-deps >/dev/null
[ -n "${DROVER_BIN_DIR:-}" ] || cargo build --release --quiet -p server -p client-agent
B=${DROVER_BIN_DIR:-$PWD/target/release}; DROVER=$B/drover; AGENT=$B/drover-agent
TAG=dsb
cleanup() {
  for ns in $(ip netns list | awk '{print $1}' | grep "^$TAG-" || true); do
    ip netns pids "$ns" | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}
trap 'cleanup; rm -rf "$W"' EXIT
export RUST_BACKTRACE=0 AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret
export AWS_ENDPOINT_URL=http://127.0.0.1:8333

# The lab: namespace 0 holds the server and the bucket (on its loopback), 1..N the agents.
cleanup
ip netns add $TAG-sw; ip -n $TAG-sw link add br0 type bridge
ip -n $TAG-sw link set br0 type bridge mcast_snooping 0; ip -n $TAG-sw link set br0 up
for i in $(seq 0 "$N"); do
  ip netns add $TAG-$i
  ip link add vs$i type veth peer name eth0 netns $TAG-$i
  ip link set vs$i netns $TAG-sw; ip -n $TAG-sw link set vs$i name p$i master br0 up
  ip -n $TAG-$i link set eth0 address "02:00:00:00:07:$(printf %02x "$i")"
  ip -n $TAG-$i addr add 10.81.0.$((10 + i))/24 brd + dev eth0
  ip -n $TAG-$i link set eth0 up; ip -n $TAG-$i link set lo up
  ip -n $TAG-$i route add 224.0.0.0/4 dev eth0
done
ip netns exec $TAG-0 ethtool -K eth0 tx-udp-segmentation off >/dev/null
ip netns exec $TAG-0 tc qdisc add dev eth0 root tbf rate "$RATE" burst 256kb latency 200ms
S=(ip netns exec $TAG-0)

mkdir -p "$W/weed"
"${S[@]}" weed mini -dir="$W/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
  -admin.ui=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 -bucket=images \
  >"$W/weed.log" 2>&1 &
WEED=$!
for _ in $(seq 120); do
  "${S[@]}" "$DROVER" image list --store s3://images/probe >/dev/null 2>&1 && break
  sleep 0.5
done

# A 64 MiB ext4 disk holding ~48 MiB of incompressible files, captured into the bucket.
STORE=s3://images/site
mkdir -p "$W/tree"
for k in $(seq 1 12); do head -c 4000000 /dev/urandom > "$W/tree/f$k"; done
truncate -s 64M "$W/src.img"; mkfs.ext4 -q -F -d "$W/tree" "$W/src.img"; rm -rf "$W/tree"
"${S[@]}" "$DROVER" --data-dir "$W/capture" image capture "$W/src.img" --name lab --store $STORE >/dev/null
read -r STORED CHUNKS < <("${S[@]}" "$DROVER" --data-dir "$W/capture" image list --store $STORE --json |
  python3 -c 'import json,sys; i=json.load(sys.stdin)[0]; print(i["stored_bytes"], i["chunks"])')
echo "bench/store-site.sh: image lab, $CHUNKS chunks, $STORED bytes stored; $N agents at $RATE" >&2

# one TRANSPORT CACHE: prints "seconds store_reads store_bytes cache_hits ok"
one() {
  local transport=$1 cache=$2 data=$W/data
  rm -rf "$data"
  local token; token=$("$DROVER" --data-dir "$data" token create bench)
  "${S[@]}" "$DROVER" --data-dir "$data" serve --http 10.81.0.10:8080 --iface eth0 \
    --store $STORE --cache-size "$cache" --multicast-rate "${RATE%bit}" > "$W/serve.log" 2>&1 &
  local spid=$!
  for _ in $(seq 1 100); do grep -q "listening" "$W/serve.log" && break; sleep 0.1; done
  local api=(--server http://10.81.0.10:8080 --token "$token")
  for i in $(seq 1 "$N"); do
    "${S[@]}" "$DROVER" machine add "02:00:00:00:07:$(printf %02x "$i")" --group lab "${api[@]}" >/dev/null
  done
  for i in $(seq 1 "$N"); do
    rm -f "$W/disk$i.img"
    ip netns exec $TAG-$i "$AGENT" --server http://10.81.0.10:8080 \
      --disk "$W/disk$i.img" --iface eth0 --max-idle 600s > "$W/agent$i.log" 2>&1 &
  done
  sleep 2 # every agent has said hello and polls
  local t0 t1 ok=1
  t0=$(date +%s.%N)
  "${S[@]}" "$DROVER" deploy lab --to lab --transport "$transport" --wait "${api[@]}" \
    > "$W/deploy.log" 2>&1 || ok=0
  t1=$(date +%s.%N)
  local st; st=$("${S[@]}" curl -sf -H "Authorization: Bearer $token" http://10.81.0.10:8080/api/v1/store)
  wait $(jobs -p | grep -vx -e "$spid" -e "$WEED") 2>/dev/null || true
  kill $spid; wait $spid 2>/dev/null || true
  rm -f "$W/ref.img"; truncate -s 64M "$W/ref.img"
  "${S[@]}" "$DROVER" --data-dir "$W/capture" image restore lab "$W/ref.img" --store $STORE >/dev/null
  for i in $(seq 1 "$N"); do cmp -s "$W/disk$i.img" "$W/ref.img" || ok=0; done
  rm -f "$W"/disk*.img
  echo "$(echo "$t1 - $t0" | bc) $(echo "$st" | python3 -c 'import json,sys; c=json.load(sys.stdin)["cache"]; print(c["store_reads"], c["store_bytes"], c["cache_hits"])') $ok"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
TSV=$OUT/store-site.tsv
printf "transport\tcache\trun\tseconds\tstore_reads\tstore_bytes\tcache_hits\tok\timage_chunks\timage_stored_bytes\n" > "$TSV"
for r in $(seq 1 "$RUNS"); do
  for t in multicast unicast; do
    for cache in 20G 0; do
      row=$(one $t $cache); echo "$t cache=$cache $r $row" >&2
      printf "%s\t%s\t%s\t%s\t%s\t%s\n" "$t" "$cache" "$r" "$(echo "$row" | tr ' ' '\t')" "$CHUNKS" "$STORED" >> "$TSV"
    done
  done
done

{
  echo "$N agents, image of $CHUNKS chunks, $STORED bytes stored in the bucket:"
  echo
  echo "| transport | server cache | seconds (median) | chunk reads from the bucket | bytes read from the bucket | ÷ image's stored size | cache hits | all disks right |"
  echo "|---|---|---|---|---|---|---|---|"
  for t in multicast unicast; do
    for cache in 20G 0; do
      rows=$(awk -F'\t' -v t="$t" -v c="$cache" '$1 == t && $2 == c' "$TSV")
      s=$(echo "$rows" | cut -f4 | median); reads=$(echo "$rows" | cut -f5 | median)
      bytes=$(echo "$rows" | cut -f6 | median); hits=$(echo "$rows" | cut -f7 | median)
      okall=$(echo "$rows" | cut -f8 | sort -u | tr '\n' ' ')
      label=$([ "$cache" = 0 ] && echo "off" || echo "$cache")
      echo "| $t | $label | $s | $reads | $bytes | $(echo "scale=2; $bytes / $STORED" | bc) | $hits | $okall |"
    done
  done
} | tee "$OUT/store-site.md"
