#!/usr/bin/env bash
# make bench: every row in one invocation, so ratios compare like with like
# on a noisy shared machine. Talks only to 127.0.0.1 on free ports, starts
# what it needs, stops only what it started (by PID), cleans up its folder.
#
#   BENCH_SECONDS   seconds per wrk row (default 10)
#   BENCH_CONNS     connections (default 64)
#   BENCH_SCALE     events for the scale rows: "1000000 10000000" (default)
#   BENCH_ONLY=9    only rows 1 and 9 (the stores and the distributed topology)
#   BENCH_HTTP_THREADS  rastro serve --threads for rows 1b-8 (default 1: wrk
#                   takes one of the two cores; BENCHMARKS.md, sixth session)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
BIN=${BIN:-$root/build/rastro}
GEN=${GEN:-$root/build/rastro-gen}
SECS=${BENCH_SECONDS:-10}
CONNS=${BENCH_CONNS:-64}
SCALE=${BENCH_SCALE:-"1000000 10000000"}
HTTP_THREADS=${BENCH_HTTP_THREADS:-1}
export RASTRO_BENCH_DIR=$here
work=$(mktemp -d /tmp/rastro-bench-XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" <<<"$2"; }
wrk_row() { # url script [env...]
    local url=$1 script=$2; shift 2
    env "$@" wrk -t1 -c"${C:-$CONNS}" -d"${SECS}s" --latency -s "$here/$script" "$url" | grep '^RESULT'
}
start_rastro() { # dir port [serve options...] -> pid in $rpid
    local d=$1 p=$2; shift 2
    "$BIN" serve --listen "127.0.0.1:$p" --data "$d" "$@" >"$d.log" 2>&1 &
    rpid=$!
    pids+=("$rpid")
    for _ in $(seq 1 600); do
        curl -sf "127.0.0.1:$p/tracking/health" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "rastro did not start; log:" >&2; cat "$d.log" >&2; exit 1
}
stop_pid() { kill "$1"; wait "$1" 2>/dev/null || true; }
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
# Half-load rows (6, 9d) pace PACE_CONNS connections, each pausing between
# its requests: wrk's timers have whole-millisecond steps, and around a 1 ms
# pause (64 connections at half load) the rate jumps with them (26k POST/s
# at 1.008 ms, 44k at 0.77); 256 connections pause ~7 ms, where a step is
# small. The pause (ms, fractional) that paces POSTs at half of full_rps is
# a connection's cycle less the round trip, which is not known ahead: it is
# found by bisection between 0 (full rate) and the pause that ignores the
# round trip (below half), five 3 s trials. (A whole-ms pause that ignored
# it ran rows 6 and 9d at 0.29-0.44 of the full rate until the fourteenth
# session.)
PACE_CONNS=256
paced_delay() { # url full_rps
    local lo=0 hi mid r i
    hi=$(python3 -c "print($PACE_CONNS * 1000 / ($2 / 2))")
    for i in 1 2 3 4 5; do
        mid=$(python3 -c "print('%.3f' % (($lo + $hi) / 2))")
        r=$(RASTRO_DELAY_MS=$mid wrk -t1 -c"$PACE_CONNS" -d3s -s "$here/post.lua" "$1" | sed -n 's/^RESULT rps=\([0-9]*\).*/\1/p')
        if python3 -c "import sys; sys.exit(0 if ${r:-0} > $2 / 2 else 1)"; then lo=$mid; else hi=$mid; fi
    done
    python3 -c "print('%.3f' % (($lo + $hi) / 2))"
}
rows=()
# label, requests/s (or empty), p99 ms, notes; ratios are added at the end
row() { rows+=("$1"$'\x1f'"$2"$'\x1f'"$3"$'\x1f'"$4"); }
ratio() { python3 -c "print('%.3f' % ($1 / $2))"; }
# "nginx beside it": the row against the higher of the nginx runs right
# before and right after it
beside() { # rps before after
    python3 -c "b = max($2, $3); print('nginx beside it %d before, %d after: %.3f' % ($2, $3, $1 / b))"
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); wrk -t1 -c$CONNS -d${SECS}s; rastro serve --threads $HTTP_THREADS" >&2

# 1. nginx: this machine's HTTP ceiling, measured first and again last; the
# higher of the two is the ceiling every ratio divides by (the conservative
# choice on a machine whose neighbours come and go).
nport=$(free_port)
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:$nport; location / { return 204; } } }
NGX
nginx_row() { # [script env...]: GET / by default
    nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" &
    npid=$!
    pids+=("$npid")
    sleep 0.5
    if [ $# -eq 0 ]; then set -- get.lua RASTRO_GET=root; fi
    wrk_row "http://127.0.0.1:$nport" "$@"
    stop_pid "$npid"
}
n1=$(nginx_row)
ceiling=$(field rps "$n1")

if [ -z "${BENCH_ONLY:-}" ]; then
# 2-6 against one fresh server
port=$(free_port)
data=$work/live
start_rastro "$data" "$port" --threads "$HTTP_THREADS"
url=http://127.0.0.1:$port
r=$(wrk_row "$url" get.lua RASTRO_GET=health)
row "1b. rastro GET /tracking/health (libmicrohttpd ceiling)" "$(field rps "$r")" "$(field p99_ms "$r")" ""
# Rows 2-4 are also compared with nginx run right before and right after
# each (the higher of the two): row 1's first and last runs are minutes
# apart, and this machine's ceiling moves 20 % within one invocation.
nb=$(field rps "$(nginx_row)")
r=$(wrk_row "$url" post.lua)
post_rps=$(field rps "$r")
na=$(field rps "$(nginx_row)")
row "2. POST impresiones (durable)" "$post_rps" "$(field p99_ms "$r")" "p50 $(field p50_ms "$r") ms, p99.9 $(field p999_ms "$r") ms, non-2xx $(field non2xx "$r"); $(beside "$post_rps" "$nb" "$na")"
# 1c. For reading row 2 only, never a divisor: nginx sent requests made by
# row 2's script (each body read and dropped, 204): what carrying a POST's
# body costs the HTTP ceiling itself.
r=$(nginx_row post.lua)
row "1c. nginx \`return 204\` to row 2's POSTs (bodies read, dropped)" "$(field rps "$r")" "$(field p99_ms "$r")" "row 2 is $(ratio "$post_rps" "$(field rps "$r")") of it (information only: every ratio column divides by row 1)"
nb=$na
r=$(wrk_row "$url" post.lua RASTRO_KIND=conversiones)
na=$(field rps "$(nginx_row)")
row "3. POST conversiones (durable)" "$(field rps "$r")" "$(field p99_ms "$r")" "p50 $(field p50_ms "$r") ms, p99.9 $(field p999_ms "$r") ms, non-2xx $(field non2xx "$r"); $(beside "$(field rps "$r")" "$nb" "$na")"
nb=$na
"$BIN" events --data "$data" --type ImpresionRegistrada --limit 50000 |
    python3 -c 'import sys, json; [print(json.loads(l)["data"]["id"]) for l in sys.stdin]' >"$work/ids"
r=$(wrk_row "$url" get.lua RASTRO_GET=stats)
na=$(field rps "$(nginx_row)")
row "4a. GET campañas/{id}/estadisticas" "$(field rps "$r")" "$(field p99_ms "$r")" "$(beside "$(field rps "$r")" "$nb" "$na")"
nb=$na
r=$(wrk_row "$url" get.lua RASTRO_GET=byid RASTRO_IDS="$work/ids")
na=$(field rps "$(nginx_row)")
row "4b. GET impresiones/{id}" "$(field rps "$r")" "$(field p99_ms "$r")" "non-2xx $(field non2xx "$r"); $(beside "$(field rps "$r")" "$nb" "$na")"
# group commit: throughput grows with concurrency (64 connections, row 2,
# is where the issue sets the target; a closed loop there waits on the
# fsync, and more clients fill bigger batches)
for c in 1 8 256; do
    r=$(C=$c wrk_row "$url" post.lua)
    row "2b. POST impresiones, $c connection(s)" "$(field rps "$r")" "$(field p99_ms "$r")" "p50 $(field p50_ms "$r") ms, non-2xx $(field non2xx "$r")"
done
r=$(wrk_row "$url" mix.lua)
row "5. 90% GET / 10% POST" "$(field rps "$r")" "$(field p99_ms "$r")" ""
# 6. lag at half the row-2 rate: each connection waits between requests
delay=$(paced_delay "$url" "$post_rps")
RASTRO_DELAY_MS=$delay wrk -t1 -c"$PACE_CONNS" -d"$((SECS + 2))s" -s "$here/post.lua" "$url" >"$work/half.out" 2>&1 &
wpid=$!
pids+=("$wpid")
sleep 1
r=$(python3 "$here/lag.py" "$port" "$SECS" | grep '^RESULT')
wait "$wpid" || true
half=$(field rps "$(grep '^RESULT' "$work/half.out")")
row "6. projection lag at ~half load ($half POST/s, $(ratio "$half" "$post_rps") of row 2)" "" "" "lag p50 $(field lag_ms_p50 "$r") ms / $(field lag_events_p50 "$r") events, p99 $(field lag_ms_p99 "$r") ms / $(field lag_events_p99 "$r") events; POST then read-your-write GET p99 $(field ryw_ms_p99 "$r") ms"
stop_pid "$rpid"

# 7-8: scale, on events generated straight into the store
small=$work/s100k
"$GEN" "$small" 100000 >/dev/null
start_rastro "$small" "$port" --threads "$HTTP_THREADS"
r=$(wrk_row "$url" post.lua)
base_rps=$(field rps "$r")
stop_pid "$rpid"
for n in $SCALE; do
    d=$work/s$n
    g=$("$GEN" "$d" "$n")
    rb=$("$BIN" rebuild --data "$d")
    eps=$(sed -n 's/.*: \([0-9]*\) events\/s.*/\1/p' <<<"$rb")
    peak=$(sed -n 's/.*peak memory \([0-9]*\) MiB.*/\1/p' <<<"$rb")
    row "7. rastro rebuild, $n events" "" "" "$eps events/s, peak RSS $peak MiB (generator: $g)"
    start_rastro "$d" "$port" --threads "$HTTP_THREADS"
    r=$(wrk_row "$url" post.lua)
    rss=$(rss_mb "$rpid")
    stop_pid "$rpid"
    ev=$(du -cb "$d"/events.db* | tail -1 | cut -f1)
    rm_=$(du -cb "$d"/readmodels.db* "$d"/rm-* | tail -1 | cut -f1)
    row "8. at $n stored events" "$(field rps "$r")" "$(field p99_ms "$r")" "POST rate $(ratio "$(field rps "$r")" "$base_rps")x the rate at 100k; RSS $rss MiB; disk/event: store $((ev / n)) B, read models $((rm_ / n)) B"
    rm -rf "$d"
done
fi

# 9a. append throughput of each event store, straight through evstore
# (rastro-gen): group commit (batches of 1,000) and one event a transaction.
pg_dir=$work/pg
sh "$root/tools/testpg.sh" start "$pg_dir" >/dev/null
pg_url=$(cat "$pg_dir/url")
pg_db() { # name -> URL of a fresh, migrated database
    PGOPTIONS="-c client_min_messages=warning" psql -q -X -d "$pg_url" \
        -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1" >/dev/null
    local u=${pg_url%/*}/$1
    "$BIN" migrate --store "$u" >/dev/null
    echo "$u"
}
for store in sqlite postgres; do
    spec=sqlite
    [ "$store" = postgres ] && spec=$(pg_db bench_append)
    g1=$("$GEN" "$work/app-$store" 200000 "$spec" 1000)
    g2=$("$GEN" "$work/app1-$store" 3000 "$spec" 1)
    row "9a. append to $store (evstore, no HTTP)" "" "" "batches of 1,000: $(sed -n 's/.*(\([0-9]*\) events\/s)/\1/p' <<<"$g1") events/s; one event a transaction: $(sed -n 's/.*(\([0-9]*\) events\/s)/\1/p' <<<"$g2") events/s"
    rm -rf "$work/app-$store" "$work/app1-$store"
done

# 9b. the distributed topology on one machine: nats-server (JetStream), the
# PostgreSQL store, and rastro as api (bus only), handler+relay, query node.
nats_port=$(free_port)
mkdir -p "$work/nats"
nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$work/nats" >"$work/nats.log" 2>&1 &
pids+=("$!")
sleep 0.5
dist_url=$(pg_db bench_dist)
start_role() { # name port args... -> pid in $rpid
    local name=$1 p=$2; shift 2
    start_rastro "$work/$name" "$p" --bus "nats://127.0.0.1:$nats_port" "$@"
}
aport=$(free_port); hport=$(free_port); qport=$(free_port)
start_role api "$aport" --role api
start_role hr "$hport" --role handler,relay --store "$dist_url"
start_role q "$qport" --role query
t0=$(date +%s.%N)
r=$(wrk_row "http://127.0.0.1:$aport" post.lua)
accepted=$(field rps "$r")
total=$(psql -qtA -X -d "$dist_url" -c "SELECT count(*) FROM events")
sent=$(curl -s "127.0.0.1:$aport/metrics" | sed -n 's/^rastro_bus_commands_total{result="acked"} //p')
# end to end: until the query node has applied everything wrk got a 202 for
for _ in $(seq 1 1200); do
    pos=$(curl -s "127.0.0.1:$qport/tracking/queries/health" | python3 -c 'import sys, json; print(json.load(sys.stdin)["position"])')
    [ "$pos" -ge "$sent" ] && break
    sleep 0.1
done
t1=$(date +%s.%N)
e2e_rate=$(python3 -c "print(int($pos / ($t1 - $t0)))")
row "9b. POST via api → JetStream (202 on broker ack)" "$accepted" "$(field p99_ms "$r")" "p50 $(field p50_ms "$r") ms; store had $total of them when wrk stopped"
row "9c. api → handler → PostgreSQL → relay → query node" "$e2e_rate" "" "$pos events applied by the query node $(python3 -c "print('%.1f' % ($t1 - $t0))") s after the load began (throughput end to end)"
delay=$(paced_delay "http://127.0.0.1:$aport" "$accepted")
RASTRO_DELAY_MS=$delay wrk -t1 -c"$PACE_CONNS" -d"$((SECS + 2))s" -s "$here/post.lua" "http://127.0.0.1:$aport" >"$work/half9.out" 2>&1 &
wpid=$!
pids+=("$wpid")
sleep 1
r=$(python3 "$here/e2e.py" "$aport" "$qport" "$SECS" | grep '^RESULT')
wait "$wpid" || true
half9=$(field rps "$(grep '^RESULT' "$work/half9.out")")
row "9d. end-to-end latency at ~half load (POST → visible on the query node)" "" "" "at $half9 POST/s ($(ratio "$half9" "$accepted") of 9b): p50 $(field e2e_ms_p50 "$r") ms, p99 $(field e2e_ms_p99 "$r") ms ($(field samples "$r") samples, $(field not_seen "$r") not seen within 10 s)"
sh "$root/tools/testpg.sh" stop "$pg_dir" >/dev/null

n2=$(nginx_row)
first=$(field rps "$n1")
second=$(field rps "$n2")
ceiling=$(python3 -c "print(max($first, $second))")
echo
echo "| row | requests/s | ratio to row 1 | p99 ms | notes |"
echo "|---|---|---|---|---|"
echo "| 1. nginx \`return 204\` (higher of first and last run) | $ceiling | 1.00 | $(field p99_ms "$n1") | first $first, last $second |"
for r in "${rows[@]}"; do
    IFS=$'\x1f' read -r label rps p99 notes <<<"$r"
    rat=""
    [ -n "$rps" ] && rat=$(ratio "$rps" "$ceiling")
    echo "| $label | $rps | $rat | $p99 | $notes |"
done
