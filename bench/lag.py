#!/usr/bin/env python3
"""Projection lag as a client sees it: POST an impression, then ask for it
with ?min_position=<its position>; the server answers as soon as the
projector has applied it, so the round trip minus a plain GET is the lag.
Runs while another load keeps the server busy. Prints one RESULT line."""
import http.client
import json
import os
import sys
import time
import uuid

port = int(sys.argv[1])
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
lags, lag_events = [], []
end = time.time() + seconds
while time.time() < end:
    body = json.dumps({"id": str(uuid.uuid4()), "campaña_id": "lag-probe"})
    conn.request("POST", "/tracking/impresiones", body.encode(), {"Content-Type": "application/json"})
    r = conn.getresponse()
    js = json.loads(r.read())
    t0 = time.perf_counter()
    conn.request("GET", "/tracking/queries/impresiones/%s?min_position=%d&wait_ms=10000"
                 % (js["id"], js["position"]))
    r = conn.getresponse()
    r.read()
    lags.append((time.perf_counter() - t0) * 1000)
    conn.request("GET", "/tracking/queries/health")
    h = json.loads(conn.getresponse().read())
    lag_events.append(h["lag_events"])
    time.sleep(0.02)
lags.sort()
lag_events.sort()
pct = lambda xs, p: xs[min(len(xs) - 1, int(len(xs) * p))]
print("RESULT samples=%d lag_ms_p50=%.1f lag_ms_p99=%.1f lag_events_p50=%d lag_events_p99=%d"
      % (len(lags), pct(lags, 0.5), pct(lags, 0.99), pct(lag_events, 0.5), pct(lag_events, 0.99)))
