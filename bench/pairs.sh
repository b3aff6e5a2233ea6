#!/usr/bin/env bash
# Same-minute A/B comparison: alternates two builds (or two sets of serve
# options) on one load, a fresh server each round, and prints every round and
# the mean ratio B/A. On a noisy shared machine a change is only worth
# keeping if it shows up here, round after round (BENCHMARKS.md).
#
#   bench/pairs.sh [-n ROUNDS] [-s SECS] [-l LOAD] A_BIN B_BIN [-- A_OPTS -- B_OPTS]
#
#   LOAD: impresiones (default) or conversiones: 64-connection durable POSTs,
#         as in `make bench` row 2; stats or byid: GETs as in rows 4a/4b,
#         after 3 s of POSTs to have something to read.
#   A_OPTS / B_OPTS: extra `rastro serve` options for each side (after
#         --threads 1), e.g. `bench/pairs.sh build/rastro build/rastro --
#         --max-header-kib 32 -- --max-header-kib 8`.
#
# Talks only to 127.0.0.1 on free ports, stops only the servers it started
# (by PID), and removes its temporary folder.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
rounds=4 secs=8 load=impresiones conns=${BENCH_CONNS:-64}
usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while getopts n:s:l:h o; do
    case $o in
    n) rounds=$OPTARG ;;
    s) secs=$OPTARG ;;
    l) load=$OPTARG ;;
    *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 2 ] || usage
bins=("$1" "$2")
shift 2
opts=("" "")
if [ $# -gt 0 ]; then
    [ "$1" = -- ] || usage
    shift
    side=0
    for a in "$@"; do
        if [ "$a" = -- ]; then side=1; continue; fi
        opts[$side]+=" $a"
    done
fi
case $load in impresiones | conversiones | stats | byid) ;; *) usage ;; esac
for b in "${bins[@]}"; do [ -x "$b" ] || { echo "pairs.sh: $b is not an executable" >&2; exit 2; }; done
command -v wrk >/dev/null || { echo "pairs.sh: wrk is missing (make bench installs it)" >&2; exit 2; }

export RASTRO_BENCH_DIR=$here
work=$(mktemp -d /tmp/rastro-pairs-XXXXXX)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" <<<"$2"; }

one() { # side -> "rps p99"
    local bin=${bins[$1]} d="$work/r$RANDOM" port url r
    port=$(free_port)
    url="http://127.0.0.1:$port"
    # shellcheck disable=SC2086  # the options are words on purpose
    "$bin" serve --listen "127.0.0.1:$port" --data "$d" --threads 1 ${opts[$1]} >"$d.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do curl -sf "$url/tracking/health" >/dev/null 2>&1 && break; sleep 0.1; done
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "pairs.sh: the server did not start; its log:" >&2; cat "$d.log" >&2; exit 1
    fi
    case $load in
    impresiones | conversiones)
        r=$(RASTRO_KIND=$load wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$here/post.lua" "$url" | grep '^RESULT') ;;
    *)
        RASTRO_KIND=impresiones wrk -t1 -c"$conns" -d3s -s "$here/post.lua" "$url" >/dev/null
        if [ "$load" = byid ]; then
            "$bin" events --data "$d" --type ImpresionRegistrada --limit 50000 |
                python3 -c 'import sys, json; [print(json.loads(l)["data"]["id"]) for l in sys.stdin]' >"$d.ids"
        fi
        r=$(RASTRO_GET=$load RASTRO_IDS="$d.ids" wrk -t1 -c"$conns" -d"${secs}s" --latency \
            -s "$here/get.lua" "$url" | grep '^RESULT') ;;
    esac
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
    rm -rf "$d" "$d.log" "$d.ids"
    local bad=$(( $(field non2xx "$r") + $(field errors "$r") ))
    if [ "$bad" -gt 0 ]; then
        echo "pairs.sh: $bad answers were not 2xx or failed; this round measures errors" >&2
    fi
    echo "$(field rps "$r") $(field p99_ms "$r")"
}

echo "A: ${bins[0]}${opts[0]}"
echo "B: ${bins[1]}${opts[1]}"
echo "load: $load, $conns connections, ${secs} s a round, $rounds rounds (A then B)"
ratios=()
for i in $(seq 1 "$rounds"); do
    read -r ra pa <<<"$(one 0)"
    read -r rb pb <<<"$(one 1)"
    ratio=$(python3 -c "print('%.3f' % ($rb / $ra))")
    ratios+=("$ratio")
    printf 'round %d: A %s/s (p99 %s ms)  B %s/s (p99 %s ms)  B/A %s\n' "$i" "$ra" "$pa" "$rb" "$pb" "$ratio"
done
python3 -c "import sys; r=[float(x) for x in sys.argv[1:]]; print('B/A mean %.3f, min %.3f, max %.3f' % (sum(r)/len(r), min(r), max(r)))" "${ratios[@]}"
