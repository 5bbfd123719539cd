#!/usr/bin/env bash
# fv-fleet under load (BENCHMARKS.md): UNITS simulated units × RATE results/s each for DURATION
# through a real Mosquitto into fv-fleet, first on SQLite, then on a PostgreSQL started here
# from Debian's package. Prints one JSON summary per database (fv-fleet load).
#   cargo build --release -p fv-fleet && results/fleet-load/run.sh > results/fleet-load/summary.jsonl
set -euo pipefail
cd "$(dirname "$0")/../.."
UNITS=${UNITS:-50} RATE=${RATE:-1} DURATION=${DURATION:-5min}
# The broker's queue for a subscriber that falls behind (beyond it Mosquitto drops QoS 1
# messages) and its in-flight window to it (which caps fv-fleet's batches).
QUEUED=${QUEUED:-100000} INFLIGHT=${INFLIGHT:-20}
BIN=${BIN:-target/release/fv-fleet}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

mqtt=$(port)
user=""; [ "$(id -u)" -eq 0 ] && user="user root"
printf '%s\nlistener %s 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\nmax_queued_messages %s\nmax_inflight_messages %s\nlog_dest file %s/mosquitto.log\n' \
  "$user" "$mqtt" "$work" "$QUEUED" "$INFLIGHT" "$work" > "$work/mosquitto.conf"
/usr/sbin/mosquitto -c "$work/mosquitto.conf" & pids+=($!)
wait_port "$mqtt"

run_one() {  # $1: database, $2: client id
  local api_port; api_port=$(port)
  "$BIN" --mqtt "mqtt://127.0.0.1:$mqtt" --db "$1" --listen "127.0.0.1:$api_port" --client-id "$2" \
    2> "$work/$2.log" & local fleet=$!
  pids+=($fleet)
  until grep -q "subscribed to" "$work/$2.log"; do sleep 0.2; done
  "$BIN" load --mqtt "mqtt://127.0.0.1:$mqtt" --api "http://127.0.0.1:$api_port" \
    --units "$UNITS" --rate "$RATE" --duration "$DURATION" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))'
  # Peak memory of the ingester over the run.
  grep VmHWM "/proc/$fleet/status" | awk '{print "{\"ingester_peak_rss_kib\": " $2 "}"}'
  kill "$fleet"; wait "$fleet" 2>/dev/null || true
}

run_one "$work/fleet.sqlite" fleet-sqlite

pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
mkdir -p "$work/pg"
as_pg=()
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$work" "$work/pg"; as_pg=(setpriv --reuid=postgres --regid=postgres --clear-groups --); fi
"${as_pg[@]}" "$pgbin/initdb" -D "$work/pg" -U postgres --auth=trust -E UTF8 > /dev/null
pg=$(port)
"${as_pg[@]}" "$pgbin/postgres" -D "$work/pg" -p "$pg" -c listen_addresses=127.0.0.1 -k "$work" > "$work/pg.log" 2>&1 & pids+=($!)
wait_port "$pg"; sleep 1
run_one "postgres://postgres@127.0.0.1:$pg/postgres" fleet-postgres
