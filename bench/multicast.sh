#!/usr/bin/env bash
# drover multicast against udpcast (udp-sender / udp-receiver, Debian package), in one run, in
# network namespaces on a bridge: the sender's link shaped with tc tbf, loss with nftables
# numgen rules on the receivers (all their UDP, feedback included), one receiver's switch port
# throttled with tbf.
#
# usage: sudo bash bench/multicast.sh [RUNS] [CASES...]
#   RUNS   runs per case and tool (default 3); medians are reported
#   CASES  any of: link0 link5 many0 many5 scale slow (default: all)
#   TOOLS=drover (env) runs drover alone
# Results: a Markdown table on stdout and in bench/out/multicast.md; raw rows in
# bench/out/multicast.tsv.
#
# Comparable settings: both tools are capped at the link rate (drover --rate, udp-sender
# --max-bitrate) on a link shaped to that rate; udp-sender gets --rexmit-hello-interval 1000
# (without it, it hangs under loss) and --min-receivers N, drover --min-receivers N. Every
# output is compared byte for byte with the source.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; shift || true
CASES=${*:-link0 link5 many0 many5 scale slow}
# Sources and outputs live on tmpfs: the benchmark measures the network engines, not this
# VM's one disk shared by 40 "machines" (drover syncs its output at the end, udp-receiver
# does not by default; on tmpfs both cost nothing).
OUT=bench/out; W=${BENCH_TMP:-/dev/shm/drover-bench-mc}
mkdir -p "$W" "$OUT"
bash deploy/install-test-deps >/dev/null
[ -n "${DROVER_BIN_DIR:-}" ] || cargo build --release --quiet -p server
# DROVER_BIN_DIR (env) runs another build's binary (a "before" build) with this script.
DROVER=${DROVER_BIN_DIR:-$PWD/target/release}/drover
TAG=mcb
PIDS=()

cleanup() {
  for ns in $(ip netns list | awk '{print $1}' | grep "^$TAG-" || true); do
    ip netns pids "$ns" | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}
trap 'cleanup; rm -rf "$W"' EXIT

lab() { # N: switch + hosts 0..N (0 sends)
  cleanup
  local n=$1
  ip netns add $TAG-sw; ip -n $TAG-sw link add br0 type bridge
  ip -n $TAG-sw link set br0 type bridge mcast_snooping 0; ip -n $TAG-sw link set br0 up
  for i in $(seq 0 "$n"); do
    ip netns add $TAG-$i
    ip link add vb$i type veth peer name eth0 netns $TAG-$i
    ip link set vb$i netns $TAG-sw; ip -n $TAG-sw link set vb$i name p$i master br0 up
    ip -n $TAG-$i addr add 10.79.0.$((10 + i))/24 brd + dev eth0
    ip -n $TAG-$i link set eth0 up; ip -n $TAG-$i link set lo up
    ip -n $TAG-$i route add 224.0.0.0/4 dev eth0
  done
}

loss() { # HOST PERCENT
  ip netns exec $TAG-$1 nft -f - <<NFT
table inet loss {
  chain pre {
    type filter hook prerouting priority -300;
    udp dport != 67 numgen random mod 100 < $2 counter drop
  }
}
NFT
}

# The sender's link: tbf at the case's rate. Its veth segments UDP in software (as a NIC
# without UDP segmentation offload would, and as every NIC's wire does): what crosses the
# bridge, and what the loss rules drop, are single datagrams, as on a real network.
shape_sender() {
  ip netns exec $TAG-0 ethtool -K eth0 tx-udp-segmentation off >/dev/null
  ip netns exec $TAG-0 tc qdisc add dev eth0 root tbf rate "$1" burst 256kb latency 200ms
}
throttle_port() { ip netns exec $TAG-sw tc qdisc add dev "p$1" root tbf rate "$2" burst 32kb latency 200ms; }

# run TOOL N RATE_MBIT LOSS SLOW(host or 0): one transfer of $W/src to hosts 1..N; prints
# "seconds sender_cpu receivers_cpu sender_rss_kib max_receiver_rss_kib others_max_seconds ok"
# where seconds is until the last receiver is done and others_max_seconds until the last one
# but the throttled one is.
run() {
  local tool=$1 n=$2 mbit=$3 pct=$4 slow=$5
  lab "$n"
  shape_sender "${mbit}mbit"
  if [ "$pct" != 0 ]; then for i in $(seq 1 "$n"); do loss "$i" "$pct"; done; fi
  if [ "$slow" != 0 ]; then throttle_port "$slow" "$((mbit / 10))mbit"; fi
  rm -f "$W"/out.* "$W"/rt.* "$W"/st
  PIDS=()
  for i in $(seq 1 "$n"); do
    if [ "$tool" = drover ]; then
      ip netns exec $TAG-$i /usr/bin/time -f "%e %U %S %M" -o "$W/rt.$i" \
        "$DROVER" multicast receive --iface eth0 --out "$W/out.$i" --wait 120s \
        >"$W/rlog.$i" 2>&1 &
    else
      ip netns exec $TAG-$i /usr/bin/time -f "%e %U %S %M" -o "$W/rt.$i" \
        udp-receiver --file "$W/out.$i" --interface eth0 --nokbd --nosync \
        >"$W/rlog.$i" 2>&1 </dev/null &
    fi
    PIDS+=($!)
  done
  sleep 1
  local t0; t0=$(date +%s.%N)
  if [ "$tool" = drover ]; then
    ip netns exec $TAG-0 /usr/bin/time -f "%e %U %S %M" -o "$W/st" \
      "$DROVER" multicast send "$W/src" --iface eth0 --rate "${mbit}M" \
      --min-receivers "$n" --max-wait 60s >"$W/slog" 2>&1
  else
    ip netns exec $TAG-0 /usr/bin/time -f "%e %U %S %M" -o "$W/st" \
      timeout 300 udp-sender --file "$W/src" --interface eth0 --min-receivers "$n" \
      --max-bitrate "${mbit}m" --rexmit-hello-interval 1000 --nokbd \
      >"$W/slog" 2>&1 </dev/null || true
  fi
  local others=0
  for i in $(seq 1 "$n"); do
    # A receiver the sender gave up on may wait forever: give it a minute, then stop it.
    timeout 60 tail --pid="${PIDS[$((i - 1))]}" -f /dev/null || kill "${PIDS[$((i - 1))]}" 2>/dev/null || true
  done
  # Each receiver's finish time, from its /usr/bin/time wall clock and its start.
  local ok=1 rcpu=0 rrss=0
  for i in $(seq 1 "$n"); do
    if ! cmp -s "$W/src" "$W/out.$i"; then ok=0; echo "  $tool: receiver $i output differs or missing" >&2; fi
    read -r e u s m <"$W/rt.$i" || true
    rcpu=$(echo "$rcpu + ${u:-0} + ${s:-0}" | bc)
    [ "${m:-0}" -gt "$rrss" ] && rrss=$m
    if [ "$i" != "$slow" ]; then
      # receivers started 1 s before the sender: their wall time minus that second
      local fin; fin=$(echo "${e:-0} - 1" | bc)
      (( $(echo "$fin > $others" | bc) )) && others=$fin
    fi
  done
  read -r se su ss sm <"$W/st"
  [ "$ok" = 1 ] || echo "  $tool: FAILED run (n=$n rate=$mbit loss=$pct slow=$slow)" >&2
  # The run's time is when the last receiver is done: udp-sender exits before its receivers.
  local done=$se
  (( $(echo "$others > $se" | bc) )) && done=$others
  echo "$done $(echo "$su + $ss" | bc) $rcpu $sm $rrss $others $ok"
  cleanup
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# case NAME TOOL N MBIT SIZE_MIB LOSS SLOW
declare -A MED
measure() {
  local name=$1 tool=$2 n=$3 mbit=$4 mib=$5 pct=$6 slow=$7
  if [ ! -f "$W/src" ] || [ "$(stat -c %s "$W/src")" != $((mib << 20)) ]; then
    head -c $((mib << 20)) /dev/urandom >"$W/src"
  fi
  local rows=()
  for r in $(seq 1 "$RUNS"); do
    local row; row=$(run "$tool" "$n" "$mbit" "$pct" "$slow")
    echo -e "$name\t$tool\t$n\t$mbit\t$mib\t$pct\t$slow\t$r\t${row// /\\t}" >>"$OUT/multicast.tsv"
    echo "  $name $tool run $r: $row" >&2
    rows+=("$row")
  done
  local col
  for col in 1 2 3 4 5 6; do
    MED[$name.$tool.$col]=$(printf '%s\n' "${rows[@]}" | awk -v c=$col '{print $c}' | median)
  done
  local okall; okall=$(printf '%s\n' "${rows[@]}" | awk '{s+=$7} END {print s}')
  MED[$name.$tool.ok]="$okall/$RUNS"
}

echo -e "case\ttool\tn\tmbit\tmib\tloss\tslow\trun\tseconds\tsender_cpu\treceivers_cpu\tsender_rss\treceiver_rss\tothers_seconds\tok" >"$OUT/multicast.tsv"
for c in $CASES; do
  for tool in ${TOOLS:-drover udpcast}; do
    case $c in
      link0) measure link0 $tool 5 300 200 0 0 ;;
      link5) measure link5 $tool 5 300 200 5 0 ;;
      many0) measure many0 $tool 40 30 50 0 0 ;;
      many5) measure many5 $tool 40 30 50 5 0 ;;
      scale)
        measure scale1 $tool 1 30 50 0 0
        measure scale10 $tool 10 30 50 0 0
        measure scale40 $tool 40 30 50 0 0 ;;
      slow)
        measure fast10 $tool 10 100 100 0 0
        measure slow10 $tool 10 100 100 0 10 ;;
    esac
  done
done

g() { echo "${MED[$1]:-}"; }
gp() { # goodput share of the link: name tool mib mbit
  local s; s=$(g "$1.$2.1"); [ -n "$s" ] || { echo "-"; return; }
  echo "scale=2; $3 * 8 * 1.048576 / $s / $4" | bc
}
ratio() { local a b; a=$(g "$1"); b=$(g "$2"); [ -n "$a" ] && [ -n "$b" ] && echo "scale=2; $a / $b" | bc || echo "-"; }
{
  echo "| case | drover | udpcast |"
  echo "|---|---|---|"
  for c in link0 link5; do
    [ -n "$(g $c.drover.1)" ] || continue
    echo "| $c: 5 receivers, 300 Mbit/s, 200 MiB, $( [ $c = link0 ] && echo 0 || echo 5 )% loss — goodput / link | **$(gp $c drover 200 300)** ($(g $c.drover.1) s) | $(gp $c udpcast 200 300) ($(g $c.udpcast.1) s) |"
  done
  if [ -n "$(g many0.drover.1)" ]; then
    echo "| 40 receivers, 30 Mbit/s, 50 MiB: seconds at 0% / 5% loss | $(g many0.drover.1) / $(g many5.drover.1) | $(g many0.udpcast.1) / $(g many5.udpcast.1) |"
    echo "| ... time(5% loss) / time(0%) | **$(ratio many5.drover.1 many0.drover.1)** | $(ratio many5.udpcast.1 many0.udpcast.1) |"
  fi
  if [ -n "$(g scale1.drover.1)" ]; then
    echo "| 30 Mbit/s, 50 MiB: seconds for N = 1 / 10 / 40 | $(g scale1.drover.1) / $(g scale10.drover.1) / $(g scale40.drover.1) | $(g scale1.udpcast.1) / $(g scale10.udpcast.1) / $(g scale40.udpcast.1) |"
    echo "| ... time(40) / time(1) | **$(ratio scale40.drover.1 scale1.drover.1)** | $(ratio scale40.udpcast.1 scale1.udpcast.1) |"
  fi
  if [ -n "$(g fast10.drover.6)" ]; then
    echo "| 10 receivers, 100 Mbit/s, 100 MiB, one port throttled to 10 Mbit/s: the others' time / without it | **$(ratio slow10.drover.6 fast10.drover.6)** ($(g slow10.drover.6) vs $(g fast10.drover.6) s) | $(ratio slow10.udpcast.6 fast10.udpcast.6) ($(g slow10.udpcast.6) vs $(g fast10.udpcast.6) s) |"
  fi
  for c in link0 link5 many0 many5 scale1 scale40 fast10 slow10; do
    [ -n "$(g $c.drover.2)" ] || continue
    echo "| $c: sender CPU s / all receivers' CPU s | $(g $c.drover.2) / $(g $c.drover.3) | $(g $c.udpcast.2) / $(g $c.udpcast.3) |"
    echo "| $c: peak RSS MiB sender / receiver | $(echo "scale=1; $(g $c.drover.4) / 1024" | bc) / $(echo "scale=1; $(g $c.drover.5) / 1024" | bc) | $(echo "scale=1; $(g $c.udpcast.4) / 1024" | bc) / $(echo "scale=1; $(g $c.udpcast.5) / 1024" | bc) |"
    echo "| $c: runs with every output byte-identical | $(g $c.drover.ok) | $(g $c.udpcast.ok) |"
  done
} | tee "$OUT/multicast.md"
