"""
Crash safety: SIGKILL the server at random moments under load from several
client threads, 20 times, restarting it each time. After every restart:
every id that got a 202 is in the event store exactly once, at its
position; positions are gap-free; and once caught up, `rastro verify`
finds the read models consistent with the log.
"""

import http.client
import os
import random
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import K_CAMPANA, KIND_STREAM, Server, events, rastro  # noqa: E402

CYCLES = 20


class CrashTest(unittest.TestCase):

    def test_twenty_sigkills(self):
        rng = random.Random(20261128)
        srv = Server()
        acked = {}
        lock = threading.Lock()
        try:
            for cycle in range(CYCLES):
                srv.start()
                stop = threading.Event()

                def worker(t, cycle=cycle):
                    n = 0
                    while not stop.is_set():
                        kind = "imp" if (t + n) % 4 else "conv"
                        id_ = "x%d-%d-%d" % (cycle, t, n)
                        n += 1
                        body = {"id": id_, K_CAMPANA: "x-c%d" % (n % 5),
                                "influencer_id": "x-i%d" % (t % 3)}
                        if kind == "conv":
                            body.update(valor="%d.01" % n, moneda="COP")
                        try:
                            status, _, js, _ = srv.post(kind, body)
                        except (OSError, http.client.HTTPException):
                            return
                        if status == 202:
                            with lock:
                                acked[(kind, id_)] = js["position"]

                threads = [threading.Thread(target=worker, args=(t,), daemon=True)
                           for t in range(4)]
                for th in threads:
                    th.start()
                # a random moment under load; every fourth run lives past
                # a second, so it folds pending statistics, and may die in a fold
                time.sleep(rng.uniform(1.0, 1.6) if cycle % 4 == 3 else rng.uniform(0.05, 0.6))
                srv.kill()
                stop.set()
                for th in threads:
                    th.join(timeout=40)
                    self.assertFalse(th.is_alive(), "a client thread hung")

                evs = events(srv.data_dir)
                self.assertEqual([e["position"] for e in evs], list(range(1, len(evs) + 1)),
                                 "cycle %d: gap in the log" % cycle)
                by_stream = {}
                for e in evs:
                    self.assertNotIn(e["stream_id"], by_stream, "cycle %d: %s twice"
                                     % (cycle, e["stream_id"]))
                    by_stream[e["stream_id"]] = e["position"]
                with lock:
                    for (kind, id_), pos in acked.items():
                        self.assertEqual(by_stream.get(KIND_STREAM[kind] + id_), pos,
                                         "cycle %d: acknowledged %s %s lost" % (cycle, kind, id_))
            self.assertGreater(len(acked), CYCLES, "too little load to mean anything")

            # caught up, the read models agree with the log
            srv.start()
            head = len(events(srv.data_dir))
            status, _, _, _ = srv.request("GET", "/tracking/queries/impresiones/none?"
                                          "min_position=%d&wait_ms=30000" % head)
            self.assertEqual(status, 404)       # answered once caught up (the id is unknown)
            # while it serves (statistics partly pending), then stopped (all folded)
            p = rastro("verify", "--data", srv.data_dir)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertEqual(srv.stop(), 0)
            p = rastro("verify", "--data", srv.data_dir)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertIn("verifying read models at position %d" % head, p.stdout)
        finally:
            if srv.running():
                srv.kill()
            srv.cleanup()


if __name__ == "__main__":
    unittest.main()
