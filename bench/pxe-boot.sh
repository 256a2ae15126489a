#!/usr/bin/env bash
# Power-on to agent: a QEMU VM (TCG, no KVM here) with a pending task boots from the network
# until drover-agent says hello (its "drover-agent VERSION: MAC on ..." line on the serial
# console), served two ways in the same run:
#   drover   drover alone: full DHCP, TFTP (UEFI's snponly.efi: --uefi-loader ipxe), the iPXE
#            script and the kernel and initramfs over HTTP
#   dnsmasq  dnsmasq for DHCP and TFTP (the classic chain), drover for the script and files
#            over HTTP (dnsmasq has no HTTP); the agent's own DHCP answered by dnsmasq too
# for BIOS (SeaBIOS + the e1000's iPXE ROM) and UEFI (OVMF's own PXE client on virtio-net:
# TFTP → snponly.efi → iPXE, Secure Boot off); and the Secure Boot chain, drover's default
# for UEFI: OVMF with Secure Boot on and Microsoft's keys (q35 with SMM), TFTP → shimx64.efi →
# grubx64.efi → the machine's GRUB script → the signed kernel and the initramfs over TFTP
# ("uefi-sb", drover only). The boot environment is built by deploy/build-boot-env with the
# release agent.
#
# usage: sudo bash bench/pxe-boot.sh [RUNS]   (default 3)
# Results: a Markdown table on stdout and in bench/out/pxe-boot.md; raw rows in
# bench/out/pxe-boot.tsv (seconds from QEMU's start).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
OUT=bench/out; W=${BENCH_TMP:-/var/tmp/drover-bench-boot}
rm -rf "$W"; mkdir -p "$W" "$OUT"
bash deploy/install-test-deps >/dev/null
dpkg-query -W -f='${Status}' dnsmasq-base 2>/dev/null | grep -q "ok installed" ||
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dnsmasq-base >/dev/null
cargo build --release --quiet -p server -p client-agent --bin drover --bin drover-agent
DROVER=$PWD/target/release/drover
Q=${QEMU_DIR:-/opt/drover-test/qemu}
export QEMU_MODULE_DIR=$Q/usr/lib/x86_64-linux-gnu/qemu
DATA=$W/data
bash deploy/build-boot-env --data-dir "$DATA" --agent "$PWD/target/release/drover-agent" \
  --cache /var/cache/drover/boot-env >/dev/null

S=dbb-srv; SW=dbb-sw; MAC=52:54:00:be:00:01; PORT=18130; URL=http://10.78.0.1:$PORT
net_down() { for n in $S $SW; do ip netns del $n 2>/dev/null || true; done; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; net_down; rm -rf "$W"; }
trap cleanup EXIT
net_down
ip netns add $SW; ip -n $SW link add br0 type bridge; ip -n $SW link set br0 up
ip -n $SW tuntap add tap0 mode tap; ip -n $SW link set tap0 master br0 up
ip netns add $S
ip link add vbb0 type veth peer name eth0 netns $S
ip link set vbb0 netns $SW; ip -n $SW link set vbb0 master br0 up
ip -n $S addr add 10.78.0.1/16 dev eth0; ip -n $S link set eth0 up; ip -n $S link set lo up

head -c 4000000 /dev/urandom >"$W/src.img"
"$DROVER" --data-dir "$DATA" image capture "$W/src.img" --name lab >/dev/null
TOKEN=$("$DROVER" --data-dir "$DATA" token create bench)
cli() { ip netns exec $S "$DROVER" --data-dir "$DATA" "$@" --server "$URL" --token "$TOKEN"; }

serve() {  # serve args...
  RUST_LOG=warn ip netns exec $S "$DROVER" --data-dir "$DATA" serve --http 0.0.0.0:$PORT \
    --public-url "$URL" --iface eth0 "$@" >"$W/serve.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do grep -q "listening" "$W/serve.log" && return; sleep 0.1; done
  cat "$W/serve.log" >&2; exit 1
}
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); sleep 0.3; }

# one boot: firmware bios|uefi; prints seconds to the agent's hello line
boot_once() {
  local fw=$1 dev args=() machine=q35 t0 now
  rm -f "$W/serial.log"
  if [ "$fw" = uefi ]; then
    cp /usr/share/OVMF/OVMF_VARS_4M.fd "$W/vars.fd"
    args=(-drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd
          -drive "if=pflash,format=raw,file=$W/vars.fd")
    dev="virtio-net-pci,netdev=n0,mac=$MAC,romfile="
  elif [ "$fw" = uefi-sb ]; then
    cp /usr/share/OVMF/OVMF_VARS_4M.ms.fd "$W/vars.fd"
    machine=q35,smm=on
    args=(-global driver=cfi.pflash01,property=secure,value=on
          -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd
          -drive "if=pflash,format=raw,file=$W/vars.fd")
    dev="virtio-net-pci,netdev=n0,mac=$MAC,romfile="
  else
    dev="e1000,netdev=n0,mac=$MAC"
  fi
  sparse() { truncate -s 64M "$W/disk.img"; }
  sparse
  t0=$(date +%s.%N)
  ip netns exec $SW "$Q/usr/bin/qemu-system-x86_64" -L /usr/share/seabios -L /usr/lib/ipxe/qemu \
    -L "$Q/usr/share/qemu" -machine $machine -accel tcg -m 512 -smp 1 -nographic -monitor none -no-reboot \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device "$dev" \
    -drive "file=$W/disk.img,format=raw,if=virtio" -boot n -serial "file:$W/serial.log" \
    "${args[@]}" </dev/null >/dev/null 2>&1 &
  local qpid=$!
  while :; do
    now=$(date +%s.%N)
    if grep -aq "drover-agent [0-9.]*: $MAC on" "$W/serial.log" 2>/dev/null; then break; fi
    if (($(echo "$now - $t0 > 300" | bc))); then echo "timeout" >&2; tail -c 2000 "$W/serial.log" >&2; break; fi
    sleep 0.1
  done
  kill $qpid 2>/dev/null || true; wait $qpid 2>/dev/null || true
  echo "$now - $t0" | bc
}

rows=$OUT/pxe-boot.tsv
: >"$rows"
# One pending task for every boot: each VM is stopped once its agent said hello, and the task
# (still active) boots the agent again next time.
serve --dhcp off
cli machine add $MAC >/dev/null
cli deploy lab --to $MAC --transport unicast >/dev/null
stop_all
for r in $(seq 1 "$RUNS"); do
  # The Secure Boot chain (drover's UEFI default), with Secure Boot on.
  serve --dhcp full --dhcp-range 10.78.1.0-10.78.1.250
  t=$(boot_once uefi-sb); stop_all
  echo -e "uefi-sb\tdrover\t$r\t$t" | tee -a "$rows"
  for fw in bios uefi; do
    serve --dhcp full --dhcp-range 10.78.1.0-10.78.1.250 --uefi-loader ipxe
    t=$(boot_once $fw); stop_all
    echo -e "$fw\tdrover\t$r\t$t" | tee -a "$rows"

    serve --dhcp off
    ip netns exec $S dnsmasq -d -q -C /dev/null --port=0 -i eth0 --bind-interfaces --no-ping \
      --dhcp-range=10.78.1.0,10.78.1.250,255.255.0.0,1h --dhcp-leasefile="$W/leases" \
      --enable-tftp --tftp-root="$DATA/boot" \
      --dhcp-match=set:ipxe,175 --dhcp-match=set:efi,option:client-arch,7 \
      --dhcp-boot=tag:ipxe,"$URL/boot/\${mac}.ipxe" --dhcp-boot=tag:!ipxe,tag:efi,snponly.efi \
      --dhcp-boot=tag:!ipxe,tag:!efi,undionly.kpxe --log-facility=/dev/null >/dev/null 2>&1 &
    pids+=($!); sleep 0.5
    t=$(boot_once $fw); stop_all
    echo -e "$fw\tdnsmasq\t$r\t$t" | tee -a "$rows"
  done
done

med() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
{
  echo "| firmware | served by | median s to the agent | runs |"
  echo "|---|---|---|---|"
  for fw in bios uefi uefi-sb; do
    for s in drover dnsmasq; do
      [ "$fw" = uefi-sb ] && [ "$s" = dnsmasq ] && continue
      v=$(awk -v f=$fw -v s=$s '$1==f && $2==s {print $4}' "$rows" | med)
      all=$(awk -v f=$fw -v s=$s '$1==f && $2==s {printf "%s%.1f", sep, $4; sep=", "}' "$rows")
      echo "| $fw | $s | $v | $all |"
    done
  done
} | tee "$OUT/pxe-boot.md"
