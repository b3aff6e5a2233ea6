#!/usr/bin/env python3
"""End-to-end latency across the distributed topology (bench row 9).

Every 50 ms, POSTs an impression with a fresh id to the api node, then asks
the query node for it by id every 2 ms until it is there: the time from
sending the command to reading it back through api -> JetStream -> handler
-> store -> relay -> JetStream -> query node. Prints one RESULT line with
p50/p99 in ms.

    e2e.py API_PORT QUERY_PORT SECONDS"""
import http.client
import json
import sys
import time
import uuid

api_port, q_port, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
api = http.client.HTTPConnection("127.0.0.1", api_port, timeout=30)
q = http.client.HTTPConnection("127.0.0.1", q_port, timeout=30)
lat, lost = [], 0
end = time.time() + seconds
while time.time() < end:
    id_ = str(uuid.uuid4())
    body = json.dumps({"id": id_, "campaña_id": "bench-e2e", "influencer_id": "inf-e2e"})
    t0 = time.perf_counter()
    api.request("POST", "/tracking/impresiones", body=body.encode(),
                headers={"Content-Type": "application/json"})
    r = api.getresponse()
    r.read()
    if r.status != 202:
        lost += 1
        continue
    deadline = t0 + 10
    while time.perf_counter() < deadline:
        q.request("GET", "/tracking/queries/impresiones/" + id_)
        g = q.getresponse()
        g.read()
        if g.status == 200:
            lat.append((time.perf_counter() - t0) * 1000)
            break
        time.sleep(0.002)
    else:
        lost += 1
    time.sleep(0.05)
lat.sort()


def pct(p):
    return lat[min(len(lat) - 1, int(len(lat) * p))] if lat else -1


print("RESULT e2e_ms_p50=%.1f e2e_ms_p99=%.1f samples=%d not_seen=%d"
      % (pct(0.5), pct(0.99), len(lat), lost))
