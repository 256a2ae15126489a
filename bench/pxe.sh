#!/usr/bin/env bash
# drover's PXE services against the peers the issue names, in the same run, on a bridge of
# network namespaces (server 10.78.0.1/16, client 10.78.0.2/16):
#   dhcp  perfdhcp (ISC Kea) against drover's full DHCP and against dnsmasq: DORA exchanges
#         per second and drops, CLIENTS distinct clients at a RATE/s offered load for SECS s
#   tftp  40 concurrent `curl tftp://` clients fetching undionly.kpxe (73 KiB) and ipxe.efi
#         (831 KiB) with blksize 1432 (as PXE ROMs ask) from drover and from tftpd-hpa: total
#         wall time until every client has the file, checked
#
# usage: sudo bash bench/pxe.sh [RUNS] [dhcp] [tftp]   (default: 5 runs, both)
# Results: a Markdown table on stdout and in bench/out/pxe.md; raw rows in bench/out/pxe.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-5}; shift || true
WHAT=${*:-dhcp tftp}
OUT=bench/out; W=${BENCH_TMP:-/var/tmp/drover-bench-pxe}
RATE=${RATE:-3000}; SECS=${SECS:-15}; CLIENTS=${CLIENTS:-4000}; TFTP_CLIENTS=${TFTP_CLIENTS:-40}
rm -rf "$W"; mkdir -p "$W/boot" "$OUT"
bash deploy/install-test-deps >/dev/null
export DEBIAN_FRONTEND=noninteractive
for p in kea-admin dnsmasq-base tftpd-hpa; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
    apt-get install -y -qq --no-install-recommends "$p" >/dev/null
done
cargo build --release --quiet -p server --bin drover
DROVER=$PWD/target/release/drover
cp /usr/lib/ipxe/undionly.kpxe /usr/lib/ipxe/ipxe.efi "$W/boot/"

S=dbp-srv; C=dbp-cli; SW=dbp-sw
net_down() { for n in $S $C $SW; do ip netns del $n 2>/dev/null || true; done; }
spid=
cleanup() { [ -n "$spid" ] && kill "$spid" 2>/dev/null || true; wait 2>/dev/null || true; net_down; rm -rf "$W"; }
trap cleanup EXIT
net_down
ip netns add $SW; ip -n $SW link add br0 type bridge; ip -n $SW link set br0 up
i=0
for n in $S $C; do
  ip netns add $n
  ip link add "vb$i" type veth peer name eth0 netns $n
  ip link set "vb$i" netns $SW; ip -n $SW link set "vb$i" master br0 up
  ip -n $n addr add "10.78.0.$((i + 1))/16" dev eth0; ip -n $n link set eth0 up; ip -n $n link set lo up
  i=$((i + 1))
done

stop() { [ -n "$spid" ] && { kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; }; spid=; sleep 0.3; }

start_drover() {  # extra serve args...
  rm -rf "$W/data"; mkdir -p "$W/data"
  RUST_LOG=warn ip netns exec $S "$DROVER" --data-dir "$W/data" serve --http 10.78.0.1:18120 --iface eth0 \
    --boot-dir "$W/boot" "$@" >"$W/serve.log" 2>&1 &
  spid=$!
  for _ in $(seq 1 100); do grep -q "listening" "$W/serve.log" && return; sleep 0.1; done
  cat "$W/serve.log" >&2; exit 1
}

# perfdhcp: prints "exchanges_per_s drops_percent"
perf() {
  ip netns exec $C perfdhcp -4 -l eth0 -r "$RATE" -R "$CLIENTS" -p "$SECS" >"$W/perf.txt" 2>&1 || true
  cp "$W/perf.txt" "$OUT/perfdhcp-last.txt"
  awk '
    /^sent packets:/ {sent[++s]=$3} /^received packets:/ {recv[++r]=$3} /^drops:/ {drop[++d]=$2}
    /^Rate:/ {rate=$2}
    END { dp = (sent[1] > 0) ? 100 * (sent[1] - recv[1] + sent[2] - recv[2]) / (sent[1] + sent[2]) : 100;
          printf "%s %.2f\n", rate, dp }' "$W/perf.txt"
}

rows=$OUT/pxe.tsv
: >"$rows"
med() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

if [[ " $WHAT " == *" dhcp "* ]]; then
  for r in $(seq 1 "$RUNS"); do
    start_drover --dhcp full --dhcp-range 10.78.1.0-10.78.250.255
    read -r rate drop < <(perf); stop
    echo -e "dhcp\tdrover\t$r\t$rate\t$drop" | tee -a "$rows"
    rm -f "$W/leases"
    # --no-ping: dnsmasq otherwise waits up to 3 s per new address for an echo (drover does
    # not ping either; a conflict shows up as a DECLINE).
    ip netns exec $S dnsmasq -d -q -C /dev/null --port=0 -i eth0 --bind-interfaces --no-ping \
      --dhcp-range=10.78.1.0,10.78.250.255,255.255.0.0,1h --dhcp-leasefile="$W/leases" \
      --log-facility=/dev/null >/dev/null 2>&1 &
    spid=$!; sleep 0.5
    read -r rate drop < <(perf); stop
    echo -e "dhcp\tdnsmasq\t$r\t$rate\t$drop" | tee -a "$rows"
  done
fi

if [[ " $WHAT " == *" tftp "* ]]; then
  fetch_all() {  # FILE: seconds for TFTP_CLIENTS concurrent fetches, all checked
    local f=$1 t0 t1 k
    t0=$(date +%s.%N)
    for k in $(seq 1 "$TFTP_CLIENTS"); do
      ip netns exec $C curl -s --max-time 60 --tftp-blksize 1432 -o "$W/got.$k" tftp://10.78.0.1/$f &
    done
    wait $(jobs -p | grep -v "^$spid$") 2>/dev/null || true
    t1=$(date +%s.%N)
    for k in $(seq 1 "$TFTP_CLIENTS"); do cmp -s "$W/got.$k" "$W/boot/$f" || { echo "client $k got a bad file" >&2; exit 1; }; done
    rm -f "$W"/got.*
    echo "$t1 - $t0" | bc
  }
  for r in $(seq 1 "$RUNS"); do
    for f in undionly.kpxe ipxe.efi; do
      start_drover --tftp 10.78.0.1:69
      t=$(fetch_all $f); stop
      echo -e "tftp-$f\tdrover\t$r\t$t\t0" | tee -a "$rows"
      ip netns exec $S in.tftpd -L -s "$W/boot" -a 10.78.0.1:69 &
      spid=$!; sleep 0.3
      t=$(fetch_all $f); stop
      echo -e "tftp-$f\ttftpd-hpa\t$r\t$t\t0" | tee -a "$rows"
    done
  done
fi

{
  echo "| test | server | median | runs |"
  echo "|---|---|---|---|"
  for k in dhcp tftp-undionly.kpxe tftp-ipxe.efi; do
    for s in drover dnsmasq tftpd-hpa; do
      awk -v k=$k -v s=$s '$1==k && $2==s {f=1} END {exit !f}' "$rows" || continue
      v=$(awk -v k=$k -v s=$s '$1==k && $2==s {print $4}' "$rows" | med)
      all=$(awk -v k=$k -v s=$s '$1==k && $2==s {printf "%s%s", sep, $4; sep=", "}' "$rows")
      if [ $k = dhcp ]; then
        d=$(awk -v k=$k -v s=$s '$1==k && $2==s {print $5}' "$rows" | med)
        echo "| DHCP exchanges/s (drops ${d} %) | $s | $v | $all |"
      else
        echo "| TFTP ${k#tftp-}, $TFTP_CLIENTS clients, s | $s | $v | $all |"
      fi
    done
  done
} | tee "$OUT/pxe.md"
