#!/usr/bin/env bash
# The dashboard while a big deployment runs: `drover serve` on loopback (SQLite on disk), and
# api_load's AGENTS (default 200) simulated agents of one unicast deployment saying hello every
# 2 s and reporting progress every second; meanwhile a logged-in user loads the overview, the
# machines page, the deployments page and the deployment's page (one row per machine) one after
# another, and one live-update stream follows the deployment. Reports per page the median and
# p99 time to the last byte and the page's size, and the stream's events per second and bytes
# per event; plus what a first visit downloads (page, style sheet, script).
#
# usage: sudo bash bench/dashboard.sh [RUNS]      (default 3; medians of the runs' medians)
# Results: a Markdown table on stdout and in bench/out/dashboard.md; raw rows in
# bench/out/dashboard.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
OUT=bench/out; W=${BENCH_TMP:-/var/tmp/drover-bench-dashboard}
N=${AGENTS:-200}; SECS=${SECONDS_RUN:-30}; PORT=18112
URL=http://127.0.0.1:$PORT
rm -rf "$W"; mkdir -p "$W" "$OUT"
cargo build --release --quiet -p server -p drover-tests --bin drover --bin api_load
DROVER=$PWD/target/release/drover; LOAD=$PWD/target/release/api_load
spid=; lpid=; epid=
cleanup() {
  for p in $epid $lpid $spid; do kill "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

PAGES="/ /machines /deployments DEPLOYMENT"
printf "run\tpage\tp50_ms\tp99_ms\tbytes\trequests\n" > "$OUT/dashboard.tsv"

one() {
  local run=$1 data=$W/data
  rm -rf "$data"; mkdir -p "$data"
  head -c 8000000 /dev/urandom > "$W/src.img"
  "$DROVER" --data-dir "$data" image capture "$W/src.img" --name lab >/dev/null
  local token; token=$("$DROVER" --data-dir "$data" token create bench)
  echo "bench-password-1" | "$DROVER" --data-dir "$data" user add bench --password-stdin >/dev/null
  RUST_LOG=warn "$DROVER" --data-dir "$data" serve --http 127.0.0.1:$PORT --iface lo > "$W/serve.log" 2>&1 &
  spid=$!
  for _ in $(seq 1 100); do grep -q "listening" "$W/serve.log" && break; sleep 0.1; done
  "$LOAD" --server "$URL" --token "$token" --agents "$N" --seconds "$SECS" > "$W/load.json" &
  lpid=$!
  local id=
  for _ in $(seq 1 200); do
    id=$(curl -sf -H "Authorization: Bearer $token" "$URL/api/v1/deployments" \
      | python3 -c 'import json,sys; d=[x for x in json.load(sys.stdin) if x["state"] in ("waiting","running")]; print(d[0]["id"] if d else "")')
    [ -n "$id" ] && break; sleep 0.1
  done
  [ -n "$id" ] || { echo "no deployment appeared" >&2; exit 1; }
  # Log in as a browser does: the login page's token and its cookie, then the form.
  local jar=$W/cookies form
  rm -f "$jar"
  form=$(curl -sf -c "$jar" "$URL/login" | sed -n 's/.*name="csrf" value="\([0-9a-f]*\)".*/\1/p' | head -1)
  curl -sf -b "$jar" -c "$jar" -o /dev/null --data "csrf=$form&user=bench&password=bench-password-1&next=" "$URL/login"
  # One live-update stream for the rest of the run.
  curl -sN -b "$jar" "$URL/deployments/$id/events" > "$W/events.txt" &
  epid=$!
  local t0; t0=$(date +%s.%N)
  sleep 2 # the agents have said hello: every row has a state
  local end=$(( $(date +%s) + SECS - 6 ))
  : > "$W/times.tsv"
  while [ "$(date +%s)" -lt "$end" ]; do
    for p in $PAGES; do
      local path=$p; [ "$p" = DEPLOYMENT ] && path=/deployments/$id
      curl -s -b "$jar" -o "$W/page.html" -w "$p\t%{http_code}\t%{time_total}\t%{size_download}\n" "$URL$path" >> "$W/times.tsv"
    done
  done
  kill "$epid" 2>/dev/null || true; wait "$epid" 2>/dev/null || true; epid=
  local t1; t1=$(date +%s.%N)
  wait "$lpid"; lpid=
  python3 - "$W/times.tsv" "$W/events.txt" "$t0" "$t1" "$run" "$OUT/dashboard.tsv" <<'EOF'
import sys, statistics
times, events, t0, t1, run, tsv = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
rows = [l.rstrip("\n").split("\t") for l in open(times) if l.strip()]
bad = [r for r in rows if r[1] != "200"]
if bad:
    sys.exit(f"pages answered {sorted(set(r[1] for r in bad))}: {bad[:3]}")
with open(tsv, "a") as out:
    for page in dict.fromkeys(r[0] for r in rows):
        t = sorted(float(r[2]) * 1000 for r in rows if r[0] == page)
        size = max(int(r[3]) for r in rows if r[0] == page)
        p99 = t[min(len(t) - 1, int(len(t) * 0.99))]
        out.write(f"{run}\t{page}\t{statistics.median(t):.1f}\t{p99:.1f}\t{size}\t{len(t)}\n")
    data = [l for l in open(events, errors="replace") if l.startswith("data:")]
    n = len(data)
    per = sum(len(l) for l in data) / n if n else 0
    out.write(f"{run}\tevents\t{n / (t1 - t0):.2f}\t0\t{per:.0f}\t{n}\n")
EOF
  kill "$spid"; wait "$spid" 2>/dev/null || true; spid=
}

for r in $(seq 1 "$RUNS"); do
  one "$r"
  awk -F'\t' -v r="$r" '$1 == r' "$OUT/dashboard.tsv" >&2
done

# What a first visit downloads besides the page.
"$DROVER" --data-dir "$W/assets" serve --http 127.0.0.1:$PORT --iface lo > "$W/serve2.log" 2>&1 &
spid=$!
for _ in $(seq 1 100); do grep -q "listening" "$W/serve2.log" && break; sleep 0.1; done
css=$(curl -sf "$URL/static/app.css" | wc -c); js=$(curl -sf "$URL/static/app.js" | wc -c)
login=$(curl -sf "$URL/login" | wc -c)

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
{
  echo "| page | median ms (median of runs) | p99 ms | size KiB | requests per run |"
  echo "|---|---|---|---|---|"
  for p in $PAGES; do
    rows=$(awk -F'\t' -v p="$p" '$2 == p' "$OUT/dashboard.tsv")
    m() { echo "$rows" | cut -f"$1" | median; }
    name=$p; [ "$p" = DEPLOYMENT ] && name="/deployments/ID ($N machines)"
    echo "| $name | $(m 3) | $(m 4) | $(echo "scale=1; $(m 5) / 1024" | bc) | $(m 6) |"
  done
  rows=$(awk -F'\t' '$2 == "events"' "$OUT/dashboard.tsv")
  echo
  echo "Live updates: $(echo "$rows" | cut -f3 | median) events/s of $(echo "$rows" | cut -f5 | median) bytes each (medians of runs)."
  echo "First visit: login page $login B, style sheet $css B, script $js B; nothing from elsewhere."
} | tee "$OUT/dashboard.md"
