#!/usr/bin/env bash
# drover deployments: the daemon and 40 agents in network namespaces on a bridge, the server's
# link shaped with tc tbf; one deployment of the same image over multicast, then over unicast
# only. Reports the time from `drover deploy` to the last machine done, the server's CPU time
# and peak RSS, and the agents' peak RSS. Then (case mem) one agent writing a 1 GiB image
# (~600 MiB used) over unicast on loopback: its peak RSS.
#
# usage: sudo bash bench/deploy.sh [RUNS] [CASES...]
#   RUNS   runs per transport (default 3); medians are reported
#   CASES  any of: lab mem (default: both)
# Results: a Markdown table on stdout and in bench/out/deploy.md; raw rows in bench/out/deploy.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; shift || true
CASES=${*:-lab mem}
OUT=bench/out; W=${BENCH_TMP:-/dev/shm/drover-bench-dep}
N=${AGENTS:-40}; RATE=${RATE:-300mbit}
mkdir -p "$W" "$OUT"
bash deploy/install-test-deps >/dev/null
[ -n "${DROVER_BIN_DIR:-}" ] || cargo build --release --quiet -p server -p client-agent
# DROVER_BIN_DIR (env) runs another build's binaries (a "before" build) with this script.
B=${DROVER_BIN_DIR:-$PWD/target/release}; DROVER=$B/drover; AGENT=$B/drover-agent
TAG=dpb
cleanup() {
  for ns in $(ip netns list | awk '{print $1}' | grep "^$TAG-" || true); do
    ip netns pids "$ns" | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}
trap 'cleanup; rm -rf "$W"' EXIT

lab() {
  cleanup
  ip netns add $TAG-sw; ip -n $TAG-sw link add br0 type bridge
  ip -n $TAG-sw link set br0 type bridge mcast_snooping 0; ip -n $TAG-sw link set br0 up
  for i in $(seq 0 "$N"); do
    ip netns add $TAG-$i
    ip link add vd$i type veth peer name eth0 netns $TAG-$i
    ip link set vd$i netns $TAG-sw; ip -n $TAG-sw link set vd$i name p$i master br0 up
    ip -n $TAG-$i link set eth0 address "02:00:00:00:05:$(printf %02x "$i")"
    ip -n $TAG-$i addr add 10.80.0.$((10 + i))/24 brd + dev eth0
    ip -n $TAG-$i link set eth0 up; ip -n $TAG-$i link set lo up
    ip -n $TAG-$i route add 224.0.0.0/4 dev eth0
  done
  ip netns exec $TAG-0 ethtool -K eth0 tx-udp-segmentation off >/dev/null
  ip netns exec $TAG-0 tc qdisc add dev eth0 root tbf rate "$RATE" burst 256kb latency 200ms
}

# A 64 MiB ext4 disk holding ~48 MiB of incompressible files.
make_image() {
  local data=$1
  rm -rf "$W/tree"; mkdir -p "$W/tree"
  for k in $(seq 1 12); do head -c 4000000 /dev/urandom > "$W/tree/f$k"; done
  truncate -s 64M "$W/src.img"; mkfs.ext4 -q -F -d "$W/tree" "$W/src.img"
  "$DROVER" --data-dir "$data" image capture "$W/src.img" --name lab >/dev/null
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

# one TRANSPORT: prints "seconds server_cpu_s server_rss_kib agents_max_rss_kib ok"
one() {
  local transport=$1 data=$W/data
  rm -rf "$data"; make_image "$data"
  local token; token=$("$DROVER" --data-dir "$data" token create bench)
  ip netns exec $TAG-0 "$DROVER" --data-dir "$data" serve --http 10.80.0.10:8080 --iface eth0 \
    --multicast-rate "${RATE%bit}" > "$W/serve.log" 2>&1 &
  local spid=$!
  for _ in $(seq 1 100); do grep -q "listening" "$W/serve.log" && break; sleep 0.1; done
  local api=(--server http://10.80.0.10:8080 --token "$token")
  for i in $(seq 1 "$N"); do
    ip netns exec $TAG-0 "$DROVER" machine add "02:00:00:00:05:$(printf %02x "$i")" --group lab "${api[@]}" >/dev/null
  done
  for i in $(seq 1 "$N"); do
    rm -f "$W/disk$i.img"
    ip netns exec $TAG-$i /usr/bin/time -f "%M" -o "$W/rss$i" "$AGENT" --server http://10.80.0.10:8080 \
      --disk "$W/disk$i.img" --iface eth0 --max-idle 600s > "$W/agent$i.log" 2>&1 &
  done
  sleep 2 # every agent has said hello and polls
  local c0 t0 t1 ok=1
  c0=$(cpu_ticks $spid); t0=$(date +%s.%N)
  ip netns exec $TAG-0 "$DROVER" deploy lab --to lab --transport "$transport" --wait "${api[@]}" \
    > "$W/deploy.log" 2>&1 || ok=0
  t1=$(date +%s.%N)
  local cpu rss; cpu=$(( $(cpu_ticks $spid) - c0 )); rss=$(hwm_kib $spid)
  wait $(jobs -p | grep -v "^$spid$") 2>/dev/null || true
  kill $spid; wait $spid 2>/dev/null || true
  rm -f "$W/ref.img"; truncate -s 64M "$W/ref.img"
  "$DROVER" --data-dir "$data" image restore lab "$W/ref.img" >/dev/null
  for i in $(seq 1 "$N"); do cmp -s "$W/disk$i.img" "$W/ref.img" || ok=0; done
  local arss; arss=$(cat "$W"/rss* | sort -n | tail -1); rm -f "$W"/rss* "$W"/disk*.img
  echo "$(echo "$t1 - $t0" | bc) $(echo "scale=2; $cpu / $(getconf CLK_TCK)" | bc) $rss $arss $ok"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

printf "case\ttransport\trun\tseconds\tserver_cpu_s\tserver_rss_kib\tagent_rss_kib\tok\n" > "$OUT/deploy.tsv"
for c in $CASES; do
  case $c in
  lab)
    lab
    for t in multicast unicast; do
      for r in $(seq 1 "$RUNS"); do
        row=$(one $t); echo "lab $t $r $row" >&2
        printf "lab\t%s\t%s\t%s\n" "$t" "$r" "$(echo "$row" | tr ' ' '\t')" >> "$OUT/deploy.tsv"
      done
    done
    cleanup ;;
  mem)
    data=$W/mem; rm -rf "$data" "$W/tree"; mkdir -p "$W/tree"
    for k in $(seq 1 60); do head -c 10000000 /dev/urandom > "$W/tree/f$k"; done
    truncate -s 1G "$W/big.img"; mkfs.ext4 -q -F -d "$W/tree" "$W/big.img"; rm -rf "$W/tree"
    "$DROVER" --data-dir "$data" image capture "$W/big.img" --name big >/dev/null; rm -f "$W/big.img"
    token=$("$DROVER" --data-dir "$data" token create bench)
    "$DROVER" --data-dir "$data" serve --http 127.0.0.1:18099 --iface lo > "$W/serve.log" 2>&1 &
    spid=$!; sleep 1.5
    "$DROVER" machine add 02:00:00:00:06:01 --server http://127.0.0.1:18099 --token "$token" >/dev/null
    "$DROVER" deploy big --to 02:00:00:00:06:01 --transport unicast --server http://127.0.0.1:18099 --token "$token" >/dev/null
    ok=1
    /usr/bin/time -f "%M %e" -o "$W/mem.time" "$AGENT" --server http://127.0.0.1:18099 --mac 02:00:00:00:06:01 \
      --disk "$W/big-out.img" --iface lo --read-back > "$W/mem.log" 2>&1 || { ok=0; tail -5 "$W/mem.log" >&2; }
    grep -q "^done: " "$W/mem.log" || ok=0
    read -r rss secs < <(tail -1 "$W/mem.time"); kill $spid; wait $spid 2>/dev/null || true
    echo "mem unicast 1 $secs - - $rss $ok" >&2
    printf "mem\tunicast\t1\t%s\t-\t-\t%s\t%s\n" "$secs" "$rss" "$ok" >> "$OUT/deploy.tsv"
    rm -rf "$data" "$W/big-out.img" ;;
  esac
done

{
  echo "| case | transport | seconds (median) | server CPU s | server peak RSS MiB | agent peak RSS MiB | all disks right |"
  echo "|---|---|---|---|---|---|---|"
  for key in "lab multicast" "lab unicast" "mem unicast"; do
    set -- $key
    rows=$(awk -F'\t' -v c="$1" -v t="$2" '$1 == c && $2 == t' "$OUT/deploy.tsv")
    [ -z "$rows" ] && continue
    s=$(echo "$rows" | cut -f4 | median); cpu=$(echo "$rows" | cut -f5 | median)
    srss=$(echo "$rows" | cut -f6 | median); arss=$(echo "$rows" | cut -f7 | sort -n | tail -1)
    okall=$(echo "$rows" | cut -f8 | sort -u | tr '\n' ' ')
    mib() { [ "$1" = "-" ] && echo "-" || echo "scale=1; $1 / 1024" | bc; }
    echo "| $1 | $2 | $s | $cpu | $(mib "$srss") | $(mib "$arss") | $okall |"
  done
} | tee "$OUT/deploy.md"
