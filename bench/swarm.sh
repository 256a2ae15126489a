#!/usr/bin/env bash
# BitTorrent vs multicast vs unicast: the daemon and N agents in network namespaces on a
# bridge, the server's uplink shaped with tc tbf (RATE); one deployment of a 256 MiB image
# (incompressible files on ext4) per transport. Reports the time from `drover deploy` to the
# last machine done and the bytes the server sent on its link (all transports alike: the
# interface's tx counter), and checks every disk against the image.
#
# usage: sudo bash bench/swarm.sh [RUNS] [N...]
#   RUNS  runs per transport and N (default 3); medians are reported
#   N     machine counts (default: 1 10 40)
# Env: RATE (tc rate of the server's link, default 300mbit), TRANSPORTS (default
# "bittorrent multicast unicast"), UNICAST_MAX_N (largest N unicast runs at, default 40),
# SERVE_ARGS (more `drover serve` flags), KEEP_LOGS (keep every agent's log and vmstat in
# bench/out/swarm-logs-TRANSPORT-N).
# Results: a Markdown table on stdout and in bench/out/swarm.md; raw rows in bench/out/swarm.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; shift || true
COUNTS=${*:-1 10 40}
OUT=bench/out; W=${BENCH_TMP:-/dev/shm/drover-bench-swarm}
RATE=${RATE:-300mbit}; TRANSPORTS=${TRANSPORTS:-bittorrent multicast unicast}
UNICAST_MAX_N=${UNICAST_MAX_N:-40}
MAXN=0; for n in $COUNTS; do [ "$n" -gt "$MAXN" ] && MAXN=$n; done
mkdir -p "$W" "$OUT"
bash deploy/install-test-deps >/dev/null
[ -n "${DROVER_BIN_DIR:-}" ] || cargo build --release --quiet -p server -p client-agent
# DROVER_BIN_DIR (env) runs another build's binaries (a "before" build) with this script.
B=${DROVER_BIN_DIR:-$PWD/target/release}; DROVER=$B/drover; AGENT=$B/drover-agent
TAG=swb
cleanup() {
  for ns in $(ip netns list | awk '{print $1}' | grep "^$TAG-" || true); do
    ip netns pids "$ns" | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}
trap 'cleanup; rm -rf "$W"' EXIT
# The ARP table is one for all namespaces (1024 entries by default): 41 hosts that all talk
# to each other need more, or some connect to no one ("neighbor table overflow").
raise() { [ "$(cat "/proc/sys/$1")" -lt "$2" ] && sysctl -qw "$(echo "$1" | tr / .)=$2" || true; }
raise net/core/netdev_max_backlog 10000
raise net/ipv4/neigh/default/gc_thresh1 4096
raise net/ipv4/neigh/default/gc_thresh2 8192
raise net/ipv4/neigh/default/gc_thresh3 16384

lab() {
  cleanup
  ip netns add $TAG-sw; ip -n $TAG-sw link add br0 type bridge
  ip -n $TAG-sw link set br0 type bridge mcast_snooping 0; ip -n $TAG-sw link set br0 up
  for i in $(seq 0 "$MAXN"); do
    ip netns add $TAG-$i
    ip link add vs$i type veth peer name eth0 netns $TAG-$i
    ip link set vs$i netns $TAG-sw; ip -n $TAG-sw link set vs$i name p$i master br0 up
    ip -n $TAG-$i link set eth0 address "02:00:00:00:08:$(printf %02x "$i")"
    ip -n $TAG-$i addr add 10.81.0.$((10 + i))/24 brd + dev eth0
    ip -n $TAG-$i link set eth0 up; ip -n $TAG-$i link set lo up
    ip -n $TAG-$i route add 224.0.0.0/4 dev eth0
  done
  ip netns exec $TAG-0 ethtool -K eth0 tx-udp-segmentation off >/dev/null
  ip netns exec $TAG-0 tc qdisc add dev eth0 root tbf rate "$RATE" burst 256kb latency 200ms
}

# A 384 MiB ext4 disk holding 256 MiB of incompressible files; captured once.
make_image() {
  rm -rf "$W/tree" "$W/image"; mkdir -p "$W/tree"
  for k in $(seq 1 64); do head -c 4194304 /dev/urandom > "$W/tree/f$k"; done
  truncate -s 384M "$W/src.img"; mkfs.ext4 -q -F -d "$W/tree" "$W/src.img"; rm -rf "$W/tree"
  "$DROVER" --data-dir "$W/image" image capture "$W/src.img" --name lab >/dev/null
  rm -f "$W/src.img" "$W/ref.img"; truncate -s 384M "$W/ref.img"
  "$DROVER" --data-dir "$W/image" image restore lab "$W/ref.img" >/dev/null
}

tx_bytes() { ip netns exec $TAG-0 cat /sys/class/net/eth0/statistics/tx_bytes; }

# one TRANSPORT N: prints "seconds server_tx_bytes ok"
one() {
  local transport=$1 n=$2 data=$W/data
  rm -rf "$data"; cp -a "$W/image" "$data"
  local token; token=$("$DROVER" --data-dir "$data" token create bench)
  ip netns exec $TAG-0 "$DROVER" --data-dir "$data" serve --http 10.81.0.10:8080 --iface eth0 \
    --multicast-rate "${RATE%bit}" ${SERVE_ARGS:-} > "$W/serve.log" 2>&1 &
  local spid=$!
  for _ in $(seq 1 100); do grep -q "listening" "$W/serve.log" && break; sleep 0.1; done
  local api=(--server http://10.81.0.10:8080 --token "$token")
  for i in $(seq 1 "$n"); do
    ip netns exec $TAG-0 "$DROVER" machine add "02:00:00:00:08:$(printf %02x "$i")" --group lab "${api[@]}" >/dev/null
  done
  local pids=()
  for i in $(seq 1 "$n"); do
    rm -f "$W/disk$i.img"
    ip netns exec $TAG-$i "$AGENT" --server http://10.81.0.10:8080 \
      --disk "$W/disk$i.img" --iface eth0 --max-idle 900s > "$W/agent$i.log" 2>&1 &
    pids+=($!)
  done
  sleep 2 # every agent has said hello and polls
  local x0 t0 t1 ok=1
  x0=$(tx_bytes); t0=$(date +%s.%N)
  vmstat -t 1 > "$W/vmstat.log" & local vpid=$!
  ip netns exec $TAG-0 "$DROVER" deploy lab --to lab --transport "$transport" --wait "${api[@]}" \
    > "$W/deploy.log" 2>&1 || ok=0
  t1=$(date +%s.%N)
  kill $vpid 2>/dev/null || true
  local tx; tx=$(( $(tx_bytes) - x0 ))
  wait "${pids[@]}" 2>/dev/null || true
  kill $spid; wait $spid 2>/dev/null || true
  cp "$W/agent1.log" "$OUT/swarm-agent1-$transport-$n.log"; cp "$W/serve.log" "$OUT/swarm-serve-$transport-$n.log"
  if [ -n "${KEEP_LOGS:-}" ]; then
    rm -rf "$OUT/swarm-logs-$transport-$n"; mkdir -p "$OUT/swarm-logs-$transport-$n"
    cp "$W"/agent*.log "$W/vmstat.log" "$OUT/swarm-logs-$transport-$n/"
  fi
  for i in $(seq 1 "$n"); do cmp -s "$W/disk$i.img" "$W/ref.img" || ok=0; done
  rm -f "$W"/disk*.img
  echo "$(echo "$t1 - $t0" | bc) $tx $ok"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

make_image
lab
printf "n\ttransport\trun\tseconds\tserver_tx_bytes\tok\n" > "$OUT/swarm.tsv"
for n in $COUNTS; do
  for t in $TRANSPORTS; do
    [ "$t" = unicast ] && [ "$n" -gt "$UNICAST_MAX_N" ] && continue
    for r in $(seq 1 "$RUNS"); do
      row=$(one "$t" "$n"); echo "n=$n $t $r $row" >&2
      printf "%s\t%s\t%s\t%s\n" "$n" "$t" "$r" "$(echo "$row" | tr ' ' '\t')" >> "$OUT/swarm.tsv"
    done
  done
done
cleanup

{
  echo "| machines | transport | seconds (median) | server sent MiB (median) | vs multicast | vs unicast | all disks right |"
  echo "|---|---|---|---|---|---|---|"
  for n in $COUNTS; do
    med() { awk -F'\t' -v n="$n" -v t="$1" -v c="$2" '$1 == n && $2 == t {print $c}' "$OUT/swarm.tsv" | median; }
    mc=$(med multicast 4); uc=$(med unicast 4)
    for t in $TRANSPORTS; do
      s=$(med "$t" 4); [ -z "$s" ] && continue
      tx=$(med "$t" 5)
      okall=$(awk -F'\t' -v n="$n" -v t="$t" '$1 == n && $2 == t {print $6}' "$OUT/swarm.tsv" | sort -u | tr '\n' ' ')
      ratio() { [ -n "$1" ] && echo "scale=2; $s / $1" | bc || echo "-"; }
      echo "| $n | $t | $s | $(echo "$tx / 1048576" | bc) | $(ratio "$mc") | $(ratio "$uc") | $okall |"
    done
  done
} | tee "$OUT/swarm.md"
