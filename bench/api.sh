#!/usr/bin/env bash
# drover's API under its agents: `drover serve` on loopback with AGENTS (default 200) simulated
# agents of one unicast deployment, each saying hello every 2 s and reporting progress every
# second (what polling and working agents send), for SECONDS (default 30). Reports the
# requests' p50/p99/max latency per kind, the request rate, errors, and the server's CPU time
# and peak RSS, on SQLite (the default, its file on disk) and on PostgreSQL.
#
# usage: sudo bash bench/api.sh [RUNS] [DATABASES...]
#   RUNS       runs per database (default 3); medians are reported
#   DATABASES  any of: sqlite postgres (default: both)
# Results: a Markdown table on stdout and in bench/out/api.md; raw rows in bench/out/api.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}; shift || true
DBS=${*:-sqlite postgres}
OUT=bench/out; W=${BENCH_TMP:-/var/tmp/drover-bench-api}
N=${AGENTS:-200}; SECS=${SECONDS_RUN:-30}; PORT=18111
rm -rf "$W"; mkdir -p "$W" "$OUT"
bash deploy/install-test-deps >/dev/null
cargo build --release --quiet -p server -p drover-tests --bin drover --bin api_load
DROVER=$PWD/target/release/drover; LOAD=$PWD/target/release/api_load
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
spid=
cleanup() {
  [ -n "$spid" ] && kill "$spid" 2>/dev/null || true
  [ -d "$W/pg/data" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT

start_pg() {
  mkdir -p "$W/pg"; chown postgres:postgres "$W/pg"
  runuser -u postgres -- "$PGBIN/initdb" -D "$W/pg/data" -A trust -U postgres >/dev/null
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/pg/data" -l "$W/pg/log" \
    -o "-p 15439 -k $W/pg -c listen_addresses=127.0.0.1" -w start >/dev/null
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

# one DB: prints the api-load JSON, then "cpu_s rss_kib"
one() {
  local db=$1 data=$W/data url
  rm -rf "$data"; mkdir -p "$data"
  head -c 8000000 /dev/urandom > "$W/src.img"
  "$DROVER" --data-dir "$data" image capture "$W/src.img" --name lab >/dev/null
  case $db in
    sqlite) url="sqlite://$data/drover.db?mode=rwc" ;;
    postgres)
      runuser -u postgres -- "$PGBIN/psql" -h 127.0.0.1 -p 15439 -U postgres -qc "DROP DATABASE IF EXISTS bench" >/dev/null
      runuser -u postgres -- "$PGBIN/psql" -h 127.0.0.1 -p 15439 -U postgres -qc "CREATE DATABASE bench" >/dev/null
      url="postgres://postgres@127.0.0.1:15439/bench" ;;
  esac
  local token; token=$("$DROVER" --data-dir "$data" token create bench --database-url "$url")
  RUST_LOG=warn "$DROVER" --data-dir "$data" serve --http 127.0.0.1:$PORT --iface lo --database-url "$url" \
    > "$W/serve.log" 2>&1 &
  spid=$!
  for _ in $(seq 1 100); do grep -q "listening" "$W/serve.log" && break; sleep 0.1; done
  local c0; c0=$(cpu_ticks $spid)
  "$LOAD" --server http://127.0.0.1:$PORT --token "$token" --agents "$N" --seconds "$SECS"
  local cpu rss; cpu=$(( $(cpu_ticks $spid) - c0 )); rss=$(hwm_kib $spid)
  kill $spid; wait $spid 2>/dev/null || true; spid=
  echo "$(echo "scale=2; $cpu / $(getconf CLK_TCK)" | bc) $rss"
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2]))" "$1" "$2"; }

printf "db\trun\thello_p50_ms\thello_p99_ms\tprogress_p50_ms\tprogress_p99_ms\tmax_ms\treq_per_s\terrors\tserver_cpu_s\tserver_rss_kib\n" > "$OUT/api.tsv"
for db in $DBS; do
  [ "$db" = postgres ] && start_pg
  for r in $(seq 1 "$RUNS"); do
    out=$(one "$db"); j=$(echo "$out" | head -1); read -r cpu rss < <(echo "$out" | tail -1)
    row=$(printf "%s\t%s\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.0f\t%s\t%s\t%s" "$db" "$r" \
      "$(field "$j" "d['hello']['p50_ms']")" "$(field "$j" "d['hello']['p99_ms']")" \
      "$(field "$j" "d['progress']['p50_ms']")" "$(field "$j" "d['progress']['p99_ms']")" \
      "$(field "$j" "max(d['hello']['max_ms'], d['progress']['max_ms'])")" \
      "$(field "$j" "d['requests_per_s']")" "$(field "$j" "d['errors']")" "$cpu" "$rss")
    echo "$row" >&2; echo "$row" >> "$OUT/api.tsv"
    [ "$(field "$j" "d['errors']")" = 0 ] || echo "errors: $(field "$j" "d['first_errors']")" >&2
  done
done

{
  echo "| database | hello p50 ms | hello p99 ms | progress p50 ms | progress p99 ms | worst ms | requests/s | errors | server CPU s | server peak RSS MiB |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for db in $DBS; do
    rows=$(awk -F'\t' -v d="$db" '$1 == d' "$OUT/api.tsv")
    m() { echo "$rows" | cut -f"$1" | median; }
    echo "| $db | $(m 3) | $(m 4) | $(m 5) | $(m 6) | $(m 7) | $(m 8) | $(echo "$rows" | cut -f9 | paste -sd+ | bc) | $(m 10) | $(echo "scale=1; $(m 11) / 1024" | bc) |"
  done
} | tee "$OUT/api.md"
