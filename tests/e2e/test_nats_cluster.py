"""
A three-server nats-server cluster on loopback with R3 streams
(--replicas 3): one server is stopped in the middle of a run. Every command
that got a 202 reaches the store exactly once and the query node sees them
all. (A 503 during the fail-over is allowed: it promised nothing.)
"""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import CAMPANAS, PostLoad, Server, enc, events, wait_for  # noqa: E402
from infra import nats_cluster  # noqa: E402




class NatsClusterTest(unittest.TestCase):

    def test_a_server_stops_mid_run(self):
        nodes = nats_cluster(3)
        for n in nodes:
            n.start()
        urls = ",".join(n.url for n in nodes)
        bus = ["--bus", urls, "--replicas", "3"]
        api = Server(extra_args=bus + ["--role", "api"])
        store = Server(extra_args=bus + ["--role", "handler,relay"])
        query = Server(extra_args=bus + ["--role", "query"])
        procs = [api, store, query]
        try:
            for p in procs:
                p.start()
            # JetStream needs its meta leader before the R3 streams exist
            wait_for(lambda: api.request("GET", "/health/ready")[0] == 200, 60,
                     "the api ready (R3 streams created)")
            load = PostLoad(api, "cl", campaign="c-cl").start()
            try:
                wait_for(lambda: load.count(202) > 300, 60, "202s before the stop")
                nodes[0].stop()
                before = load.count(202)
                wait_for(lambda: load.count(202) > before + 300, 60, "202s with one server down")
            finally:
                load.stop()
            self.assertEqual(load.bad, [])
            acked, answers = load.acked, load.answers

            def stored():
                return {e["stream_id"] for e in events(store.data_dir)} >= acked
            wait_for(stored, 120, "every acknowledged command in the store")
            streams = [e["stream_id"] for e in events(store.data_dir)]
            self.assertEqual(len(streams), len(set(streams)), "a command stored twice")
            head = len(streams)
            # the client waits longer than it asks the query node to: a slow
            # catch-up is a 503 with the node's position, not a socket timeout
            status, _, js, raw = query.request(
                "GET", "/tracking/queries/%s/%s/estadisticas?min_position=%d&wait_ms=60000"
                % (CAMPANAS, enc("c-cl"), head), timeout=75)
            self.assertEqual(status, 200, raw)
            self.assertEqual(js["total_impresiones"], head)
            print("cluster: answers %r, %d stored" % (answers, head), file=sys.stderr)
            for p in procs:
                p.stop()
        except BaseException:
            for p in procs:
                p.dump_log("after a failure of the cluster test", tail_lines=60)
            raise
        finally:
            for p in procs:
                p.kill()
                p.cleanup()
            for n in nodes:
                n.cleanup()


if __name__ == "__main__":
    unittest.main(verbosity=2)
