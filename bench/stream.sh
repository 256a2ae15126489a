#!/usr/bin/env bash
# A deployment straight from a machine's disk (issue 21): the daemon, one source machine and
# N target machines in network namespaces on a bridge, the server's and the source's links
# shaped with tc tbf. Same run, same disk:
#   stream   drover deploy --from SRC --to lab --keep-as copy --wait   (read and sent at once)
#   twostep  drover capture SRC --name copy --wait, then drover deploy copy --to lab --wait
#            (capture first, deploy after: Clonezilla SE's and FOG's way, and drover's before)
# Reports the time from the first command to the last machine done; every target is then
# compared byte for byte with the source disk.
#
# usage: sudo bash bench/stream.sh [RUNS]
#   RUNS  runs per way (default 3); medians are reported
# Results: a Markdown table on stdout and in bench/out/stream.md; raw rows in bench/out/stream.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
OUT=bench/out; W=${BENCH_TMP:-/dev/shm/drover-bench-stream}
N=${AGENTS:-10}; RATE=${RATE:-300mbit}; MIB=${MIB:-192}
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
mac() { echo "02:00:00:00:07:$(printf %02x "$1")"; }

# Host 0 the server, host 1 the source, hosts 2..N+1 the targets.
lab() {
  cleanup
  ip netns add $TAG-sw; ip -n $TAG-sw link add br0 type bridge
  ip -n $TAG-sw link set br0 type bridge mcast_snooping 0; ip -n $TAG-sw link set br0 up
  for i in $(seq 0 $((N + 1))); do
    ip netns add $TAG-$i
    ip link add vs$i type veth peer name eth0 netns $TAG-$i
    ip link set vs$i netns $TAG-sw; ip -n $TAG-sw link set vs$i name p$i master br0 up
    ip -n $TAG-$i link set eth0 address "$(mac "$i")"
    ip -n $TAG-$i addr add 10.81.0.$((10 + i))/24 brd + dev eth0
    ip -n $TAG-$i link set eth0 up; ip -n $TAG-$i link set lo up
    ip -n $TAG-$i route add 224.0.0.0/4 dev eth0
  done
  ip netns exec $TAG-0 ethtool -K eth0 tx-udp-segmentation off >/dev/null
  for i in 0 1; do
    ip netns exec $TAG-$i tc qdisc add dev eth0 root tbf rate "$RATE" burst 256kb latency 200ms
  done
}

# The source machine's disk: ext4 holding ~MIB MiB of incompressible files.
rm -rf "$W/tree"; mkdir -p "$W/tree"
for k in $(seq 1 $((MIB / 8))); do head -c 8000000 /dev/urandom > "$W/tree/f$k"; done
truncate -s $((MIB * 3 / 2))M "$W/src.img"; mkfs.ext4 -q -F -d "$W/tree" "$W/src.img"; rm -rf "$W/tree"

# one WAY: prints "seconds ok"
one() {
  local way=$1 data=$W/data
  rm -rf "$data"
  local token; token=$("$DROVER" --data-dir "$data" token create bench)
  ip netns exec $TAG-0 "$DROVER" --data-dir "$data" serve --http 10.81.0.10:8080 --iface eth0 \
    --multicast-rate "${RATE%bit}" > "$W/serve.log" 2>&1 &
  local spid=$!
  for _ in $(seq 1 100); do grep -q "listening" "$W/serve.log" && break; sleep 0.1; done
  local api=(--server http://10.81.0.10:8080 --token "$token")
  ip netns exec $TAG-0 "$DROVER" machine add "$(mac 1)" "${api[@]}" >/dev/null
  for i in $(seq 2 $((N + 1))); do
    ip netns exec $TAG-0 "$DROVER" machine add "$(mac "$i")" --group lab "${api[@]}" >/dev/null
  done
  for i in $(seq 1 $((N + 1))); do
    local disk=$W/disk$i.img
    [ "$i" = 1 ] && disk=$W/src.img || { rm -f "$disk"; truncate -s $((MIB * 3 / 2))M "$disk"; }
    ip netns exec $TAG-$i "$AGENT" --server http://10.81.0.10:8080 --disk "$disk" --iface eth0 \
      --max-idle 600s > "$W/agent$i.log" 2>&1 &
  done
  sleep 2 # every agent has said hello and polls
  local t0 t1 ok=1
  t0=$(date +%s.%N)
  case $way in
  stream)
    ip netns exec $TAG-0 "$DROVER" deploy --from "$(mac 1)" --keep-as copy --to lab --wait "${api[@]}" \
      > "$W/deploy.log" 2>&1 || ok=0 ;;
  twostep)
    ip netns exec $TAG-0 "$DROVER" capture "$(mac 1)" --name copy --wait "${api[@]}" \
      > "$W/capture.log" 2>&1 || ok=0
    ip netns exec $TAG-0 "$DROVER" deploy copy --to lab --wait "${api[@]}" \
      > "$W/deploy.log" 2>&1 || ok=0 ;;
  esac
  t1=$(date +%s.%N)
  [ "$ok" = 1 ] || { tail -3 "$W/deploy.log" >&2; tail -3 "$W/agent2.log" >&2; }
  wait $(jobs -p | grep -v "^$spid$") 2>/dev/null || true
  kill $spid; wait $spid 2>/dev/null || true
  for i in $(seq 2 $((N + 1))); do cmp -s "$W/disk$i.img" "$W/src.img" || ok=0; done
  rm -f "$W"/disk*.img
  echo "$(echo "$t1 - $t0" | bc) $ok"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

lab
printf "way\trun\tseconds\tok\n" > "$OUT/stream.tsv"
for r in $(seq 1 "$RUNS"); do
  # Interleaved, so a noisy moment on the shared machine hurts both ways alike.
  for way in stream twostep; do
    row=$(one $way); echo "$way $r $row" >&2
    printf "%s\t%s\t%s\n" "$way" "$r" "$(echo "$row" | tr ' ' '\t')" >> "$OUT/stream.tsv"
  done
done
cleanup

{
  s=$(awk -F'\t' '$1 == "stream"' "$OUT/stream.tsv" | cut -f3 | median | xargs printf "%.2f")
  t=$(awk -F'\t' '$1 == "twostep"' "$OUT/stream.tsv" | cut -f3 | median | xargs printf "%.2f")
  okall=$(cut -f4 "$OUT/stream.tsv" | tail -n +2 | sort -u | tr '\n' ' ')
  echo "| ${MIB} MiB used, $N targets, links $RATE | seconds (median of $RUNS) |"
  echo "|---|---|"
  echo "| drover deploy --from (streamed as read, kept as an image) | $s |"
  echo "| drover capture, then drover deploy (two steps) | $t |"
  echo "| ratio | $(echo "scale=3; $s / $t" | bc | xargs printf "%.2f") |"
  echo "| every target equal to the source disk | $okall |"
} | tee "$OUT/stream.md"
