#!/usr/bin/env python3
"""Projection lag while another load keeps the server busy (bench row 6).

Passive: samples GET /tracking/queries/health every 10 ms and reports the
p50/p99 of lag_events (store head minus projected position) and lag_ms (time
since the projector last had everything applied: an upper bound on the age
of the oldest unapplied event).

Read-your-writes: every 200 ms, POSTs an impression and asks for it with
?min_position=<its position>; the round trip is how long a client that
waits for its own write waits. Prints one RESULT line."""
import http.client
import json
import sys
import time
import uuid

port = int(sys.argv[1])
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
lag_ev, lag_ms, ryw = [], [], []
end = time.time() + seconds
next_probe = time.time()
while time.time() < end:
    conn.request("GET", "/tracking/queries/health")
    h = json.loads(conn.getresponse().read())
    lag_ev.append(h["lag_events"])
    lag_ms.append(h["lag_ms"])
    if time.time() >= next_probe:
        next_probe = time.time() + 0.2
        body = json.dumps({"id": str(uuid.uuid4()), "campaña_id": "lag-probe"})
        t0 = time.perf_counter()
        conn.request("POST", "/tracking/impresiones", body.encode(),
                     {"Content-Type": "application/json"})
        js = json.loads(conn.getresponse().read())
        conn.request("GET", "/tracking/queries/impresiones/%s?min_position=%d&wait_ms=10000"
                     % (js["id"], js["position"]))
        conn.getresponse().read()
        ryw.append((time.perf_counter() - t0) * 1000)
    time.sleep(0.01)
for xs in (lag_ev, lag_ms, ryw):
    xs.sort()


def pct(xs, p):
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else 0


print("RESULT samples=%d lag_events_p50=%d lag_events_p99=%d lag_ms_p50=%d lag_ms_p99=%d"
      " ryw_ms_p50=%.1f ryw_ms_p99=%.1f"
      % (len(lag_ev), pct(lag_ev, .5), pct(lag_ev, .99), pct(lag_ms, .5), pct(lag_ms, .99),
         pct(ryw, .5), pct(ryw, .99)))
