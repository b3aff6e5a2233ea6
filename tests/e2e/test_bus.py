"""
The api, handler and relay roles against a real nats-server (started here
on a free loopback port, JetStream in a temporary folder), with the
embedded SQLite store behind the handler:
 - bus down: the api answers 503 with Retry-After within a second (no
   request hangs); bus back on the same port: 202 again with no restart,
   and every command that got a 202 reaches the store exactly once;
 - a poison command (published straight onto the command subject) goes to
   TRACKING_DLQ with its reason after 5 deliveries, and the commands behind
   it are processed; an id reused with another payload goes there at once;
   `rastro dlq list` shows both and `rastro dlq replay` sends them back;
 - the streams are on file storage and survive a broker restart.
"""

import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import K_CAMPANA, PostLoad, Server, events, rastro, wait_for  # noqa: E402
from infra import NatsServer, nats_publish  # noqa: E402




def stored_streams(data_dir):
    return [e["stream_id"] for e in events(data_dir)]


def dlq(nats, *args):
    cp = rastro("dlq", *args, "--bus", nats.url)
    assert cp.returncode == 0, cp.stderr
    return cp


class BusTest(unittest.TestCase):

    def setUp(self):
        self.nats = NatsServer().start()
        bus = ["--bus", self.nats.url]
        self.api = Server(extra_args=bus + ["--role", "api"]).start()
        # the handler and relay share one process and its SQLite store
        self.store = Server(extra_args=bus + ["--role", "handler,relay"]).start()

    def tearDown(self):
        for s in (self.api, self.store):
            s.kill()
            s.cleanup()
        self.nats.cleanup()

    def test_bus_down_then_back(self):
        load = PostLoad(self.api, "down", campaign="c-down", threads=3, refuse_within=1.0,
                        pause=0.005).start()
        try:
            wait_for(lambda: load.count(202) > 50, 30, "202s with the bus up")
            self.nats.stop()
            t_down = time.monotonic()
            wait_for(lambda: load.count(503) > 20, 10, "503s with the bus down")
            first_503 = time.monotonic() - t_down
            self.nats.start()
            before = load.count(202)
            wait_for(lambda: load.count(202) > before + 50, 30, "202s after the bus is back")
        finally:
            load.stop()
        self.assertEqual(load.bad, [])
        self.assertLess(first_503, 5.0)
        # nothing that got a 202 is lost, nothing is there twice
        wait_for(lambda: set(stored_streams(self.store.data_dir)) >= load.acked, 60,
                 "every acknowledged command in the store")
        streams = stored_streams(self.store.data_dir)
        self.assertEqual(len(streams), len(set(streams)))
        print("bus down: answers %r, %d stored" % (load.answers, len(streams)), file=sys.stderr)
        status, _, js, _ = self.api.request("GET", "/health/ready")
        self.assertEqual(status, 200, js)

    def test_poison_and_reused_id_go_to_the_dlq(self):
        # a message no api would send: no envelope, not even JSON
        nats_publish(self.nats.port, "tracking.cmd.impresion", b"\x00garbage",
                     headers={"Nats-Msg-Id": "poison-1"})
        # the ones behind it
        for i in range(20):
            status, _, _, raw = self.api.post("imp", {"id": "after-%d" % i, K_CAMPANA: "c-p"})
            self.assertEqual(status, 202, raw)
        wait_for(lambda: len(stored_streams(self.store.data_dir)) >= 20, 30,
                 "the commands behind the poison")
        # an id used again with another payload: accepted by the api (it
        # cannot know), refused by the handler, kept in the DLQ
        status, _, _, raw = self.api.post("imp", {"id": "after-3", K_CAMPANA: "another"})
        self.assertEqual(status, 202, raw)
        # the same command again is a duplicate, not a conflict: no DLQ entry
        status, _, _, raw = self.api.post("imp", {"id": "after-4", K_CAMPANA: "c-p"})
        self.assertEqual(status, 202, raw)

        def listed():
            lines = [json.loads(x) for x in dlq(self.nats, "list").stdout.splitlines() if x]
            return lines if len(lines) >= 2 else None

        entries = wait_for(listed, 30, "two DLQ entries")
        reasons = {e["stream_id"] or e["data"]: e for e in entries}
        self.assertEqual(len(entries), 2, entries)
        poison = [e for e in entries if e["stream_id"] == ""][0]
        self.assertIn("envelope", poison["reason"])
        self.assertEqual(poison["deliveries"], 5)
        self.assertEqual(poison["subject"], "tracking.cmd.impresion")
        reused = reasons["impresion:after-3"]
        self.assertIn("different payload", reused["reason"])
        self.assertEqual(reused["deliveries"], 1)
        streams = stored_streams(self.store.data_dir)
        self.assertEqual(len(streams), 20)
        self.assertEqual(len(set(streams)), 20)
        _, _, _, metrics = self.store.request("GET", "/metrics")
        self.assertIn(b'rastro_handler_commands_total{result="dead_lettered"} 2', metrics)
        self.assertIn(b'rastro_handler_commands_total{result="duplicate"} 1', metrics)

        # replay: back to the handlers; still bad, so back in the DLQ (as new
        # entries: the old ones are gone)
        cp = dlq(self.nats, "replay", "--seq", str(reused["seq"]))
        self.assertIn("replayed %d" % reused["seq"], cp.stdout)
        wait_for(lambda: [e for e in (listed() or []) if e["seq"] > reused["seq"]
                          and e["stream_id"] == "impresion:after-3"], 30, "the replayed entry")
        seqs = [e["seq"] for e in listed()]
        self.assertNotIn(reused["seq"], seqs)
        self.assertEqual(len(seqs), 2)

    def test_api_with_a_store_answers_once_durable(self):
        """api given --store: the embedded write path (202 with a position,
        after the fsync), the relay of the same process publishes, and a
        query node on the bus serves it; min_position works across them."""
        bus = ["--bus", self.nats.url]
        writer = Server(extra_args=bus + ["--role", "api,relay", "--store", "sqlite"]).start()
        query = Server(extra_args=bus + ["--role", "query"]).start()
        try:
            last = 0
            for i in range(5):
                status, _, js, raw = writer.post("imp", {"id": "st-%d" % i, K_CAMPANA: "c-st"})
                self.assertEqual(status, 202, raw)
                self.assertEqual(js["position"], last + 1)
                last = js["position"]
            status, hdrs, js, raw = query.request(
                "GET", "/tracking/queries/campa%%C3%%B1as/c-st/estadisticas?min_position=%d"
                "&wait_ms=10000" % last)
            self.assertEqual(status, 200, raw)
            self.assertEqual(js["total_impresiones"], 5)
            self.assertEqual(int(hdrs["x-rastro-position"]), last)
            writer.stop()
            query.stop()
        finally:
            for s in (writer, query):
                s.kill()
                s.cleanup()

    def test_ids_with_blanks_cross_the_bus_intact(self):
        """NATS trims blanks from header values; stream ids travel encoded,
        so "sp " and "sp" stay two commands, as in the embedded mode."""
        for id_, camp in (("sp ", "c-a"), ("sp", "c-b"), (" sp", "c-c")):
            status, _, _, raw = self.api.post("imp", {"id": id_, K_CAMPANA: camp})
            self.assertEqual(status, 202, raw)
        streams = wait_for(lambda: (lambda s: s if len(s) >= 3 else None)(
            stored_streams(self.store.data_dir)), 30, "three stored commands")
        self.assertEqual(sorted(streams), ["impresion: sp", "impresion:sp", "impresion:sp "])
        self.assertEqual(dlq(self.nats, "list").stdout.strip(), "")

    def test_streams_survive_a_broker_restart(self):
        for i in range(10):
            status, _, _, raw = self.api.post("imp", {"id": "keep-%d" % i, K_CAMPANA: "k"})
            self.assertEqual(status, 202, raw)
        self.store.stop()               # the commands wait in the stream
        self.nats.stop()
        self.nats.start()
        self.store.start()
        wait_for(lambda: len(stored_streams(self.store.data_dir)) == 10, 30,
                 "the commands published before the restart")


if __name__ == "__main__":
    unittest.main(verbosity=2)
