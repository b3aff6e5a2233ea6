#!/usr/bin/env bash
# Where the committer's fdatasync spends its time under load: the "why" of
# BENCHMARKS.md's write row. Starts rastro on a free 127.0.0.1 port in a
# temporary folder, loads it with wrk's impression POSTs (64 connections,
# one HTTP thread, as `make bench` row 2), records one second of the
# kernel's ext4 sync and block-request tracepoints with perf, and prints,
# for the committer's fdatasync calls:
#   total          fdatasync, entry to return
#   data write     entry until the WAL pages' write request completed
#   until flush    from then until the disk's cache flush was issued
#   flush          from the flush's issue until fdatasync returned
# Needs root (tracepoints), perf, wrk, python3; `make bench` installs wrk.
# Stops only the processes it started, by PID, and removes its folder.
#
#   bench/fsync_trace.sh [path/to/rastro]      (default: build/rastro)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../build/rastro}
secs=${TRACE_LOAD_SECONDS:-5}
for tool in perf wrk python3; do
    command -v "$tool" >/dev/null || { echo "fsync_trace: $tool is not installed" >&2; exit 1; }
done
[ -x "$bin" ] || { echo "fsync_trace: no rastro binary at $bin (make first)" >&2; exit 1; }

work=$(mktemp -d /tmp/rastro-fsync-trace.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" serve --listen "127.0.0.1:$port" --data "$work/data" --threads 1 >"$work/log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    curl -sf "127.0.0.1:$port/tracking/health" >/dev/null 2>&1 && break
    sleep 0.1
done
RASTRO_BENCH_DIR=$here RASTRO_KIND=impresiones \
    wrk -t1 -c64 -d"${secs}s" -s "$here/post.lua" "http://127.0.0.1:$port" >"$work/wrk.out" 2>&1 &
pids+=($!)
sleep 2
perf record -q -a -o "$work/trace.data" \
    -e ext4:ext4_sync_file_enter,ext4:ext4_sync_file_exit,block:block_rq_issue,block:block_rq_complete \
    -- sleep 1 >/dev/null 2>&1
wait "${pids[1]}" || true
grep '^RESULT' "$work/wrk.out" || true
perf script -i "$work/trace.data" 2>/dev/null >"$work/trace.txt"

python3 - "$work/trace.txt" <<'PY'
import re
import sys

line_re = re.compile(r'\s*(\S+)\s+\d+\s+\[\d+\]\s+([\d.]+):\s+(\S+):\s+(.*)')
events = []
for line in open(sys.argv[1]):
    m = line_re.match(line)
    if m:
        events.append((m.group(1), float(m.group(2)), m.group(3), m.group(4)))

total, data, until_flush, flush = [], [], [], []
cur = None
for comm, t, name, rest in events:
    is_flush = ' FF ' in rest
    if comm == 'rastro-commit' and name == 'ext4:ext4_sync_file_enter':
        cur = {'enter': t, 'sector': None}
    elif cur is None:
        continue
    elif name == 'block:block_rq_issue' and comm == 'rastro-commit' and not is_flush:
        m = re.search(r' (\d+) \+ \d+ ', rest)
        if m and cur['sector'] is None:
            cur['sector'] = m.group(1)
    elif name == 'block:block_rq_complete' and not is_flush and 'done' not in cur:
        m = re.search(r' (\d+) \+ \d+ ', rest)
        if m and m.group(1) == cur['sector']:
            cur['done'] = t
    elif name == 'block:block_rq_issue' and is_flush and 'done' in cur and 'flush' not in cur:
        cur['flush'] = t
    elif comm == 'rastro-commit' and name == 'ext4:ext4_sync_file_exit':
        total.append(t - cur['enter'])
        if 'done' in cur and 'flush' in cur:
            data.append(cur['done'] - cur['enter'])
            until_flush.append(cur['flush'] - cur['done'])
            flush.append(t - cur['flush'])
        cur = None

def row(label, v):
    if not v:
        print(f"{label:<14} (no samples)")
        return
    v = sorted(x * 1e6 for x in v)
    pick = lambda q: v[min(len(v) - 1, int(q * len(v)))]
    print(f"{label:<14} n={len(v):<6} mean {sum(v)/len(v):6.0f} us  p50 {pick(.5):6.0f}"
          f"  p90 {pick(.9):6.0f}  p99 {pick(.99):6.0f}")

print("the committer's fdatasync calls during one second of load:")
row("total", total)
row("data write", data)
row("until flush", until_flush)
row("flush", flush)
PY
