"""
The distributed topology through real processes: a nats-server with
JetStream, the PostgreSQL store, and rastro as 1 api, 2 handlers, 1 relay
and 2 query nodes, each its own process and data folder. 10,000 commands
from several client threads; in the middle one handler, the relay and one
query node are killed with SIGKILL and started again. Afterwards: every id that got a
202 is in the store exactly once, positions are gap-free, and both query
nodes give identical statistics that add up to the store.
"""

import json
import os
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import CAMPANAS, K_CAMPANA, KIND_STREAM, Server, enc  # noqa: E402
from infra import PG_DIR, NatsServer, migrated, nats_request, psql  # noqa: E402

TOTAL = 10000
THREADS = 8
CAMPAIGNS = 20
INFLUENCERS = 7


def body(t, n):
    b = {"id": "topo-%d-%d" % (t, n), K_CAMPANA: "camp-%d" % (n % CAMPAIGNS),
         "influencer_id": "inf-%d" % (n % INFLUENCERS), "usuario_id": "u-%d" % n}
    if n % 10 == 0:
        b.update(tipo_conversion="VENTA", valor="%d.25" % (n % 100), moneda="EUR")
        return "conv", b
    return "imp", b


def stats(node, scope, key, min_position):
    status, _, js, raw = node.request(
        "GET", "/tracking/queries/%s/%s/estadisticas?min_position=%d&wait_ms=30000"
        % (scope, enc(key), min_position))
    assert status == 200, (status, raw)
    js.pop("ultima_actualizacion", None)
    return js


def post_and_publish(test, nats, writer, prefix, campaign, total):
    """total impressions through the writer (api, handler and relay), then
    waits until the relay has published every one to TRACKING_EVENTS."""
    for i in range(total):
        status, _, _, raw = writer.post("imp", {"id": "%s-%d" % (prefix, i), K_CAMPANA: campaign})
        test.assertEqual(status, 202, raw)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = json.loads(nats_request(nats.port, "$JS.API.STREAM.INFO.TRACKING_EVENTS", b""))
        if info["state"]["last_seq"] == total:
            return
        time.sleep(0.05)
    test.fail("the relay did not publish %d events in 30 s" % total)


def kill_all(nodes, nats):
    """The tests' finally: whatever still runs is killed, folders removed."""
    for n in nodes:
        n.kill()
        n.cleanup()
    nats.cleanup()


@unittest.skipUnless(PG_DIR, "no PostgreSQL test cluster (RASTRO_TEST_PG_DIR unset)")
class TopologyTest(unittest.TestCase):

    def test_api_handlers_relay_query_nodes_with_kills(self):
        # (the relay's restart resumes from the stream: tested by the stats
        # reaching exactly TOTAL on both nodes, nothing missing or doubled)
        nats = NatsServer().start()
        url = migrated("topo")
        bus = ["--bus", nats.url]
        api = Server(extra_args=bus + ["--role", "api"])
        handlers = [Server(extra_args=bus + ["--role", "handler", "--store", url])
                    for _ in range(2)]
        relay = Server(extra_args=bus + ["--role", "relay", "--store", url])
        # q1 has only the bus; q2 can fill gaps from the store
        q1 = Server(extra_args=bus + ["--role", "query"])
        q2 = Server(extra_args=bus + ["--role", "query", "--store", url])
        nodes = [api] + handlers + [relay, q1, q2]
        try:
            for n in nodes:
                n.start()
            acked, bad = set(), []
            lock = threading.Lock()
            sent = [0]

            def client(t):
                for n in range(TOTAL // THREADS):
                    kind, b = body(t, n)
                    try:
                        status, _, js, raw = api.post(kind, b)
                    except OSError as ex:
                        status, raw = None, repr(ex)
                    with lock:
                        sent[0] += 1
                        if status == 202:
                            acked.add(KIND_STREAM[kind] + b["id"])
                        else:
                            bad.append((b["id"], status, raw))

            threads = [threading.Thread(target=client, args=(t,)) for t in range(THREADS)]
            for t in threads:
                t.start()
            while sent[0] < TOTAL * 0.4:
                time.sleep(0.01)
            handlers[0].kill()
            q1.kill()
            while sent[0] < TOTAL * 0.5:
                time.sleep(0.01)
            relay.kill()
            while sent[0] < TOTAL * 0.6:
                time.sleep(0.01)
            handlers[0].start()
            q1.start()
            relay.start()
            for t in threads:
                t.join()
            self.assertEqual(bad, [])
            self.assertEqual(len(acked), TOTAL)

            # the handlers drain the command stream into the store
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                count = int(psql(url, "SELECT count(*) FROM events")[0][0])
                if count >= TOTAL:
                    break
                time.sleep(0.2)
            rows = psql(url, "SELECT stream_id, count(*) FROM events GROUP BY 1")
            stored = {sid: int(n) for sid, n in rows}
            self.assertEqual(sorted(s for s, n in stored.items() if n != 1), [],
                             "streams stored more than once")
            self.assertEqual(acked - set(stored), set(), "acknowledged but not stored")
            self.assertEqual(psql(url, "SELECT count(*), max(position) FROM events"),
                             [[str(TOTAL), str(TOTAL)]], "positions are not gap-free")

            # both query nodes reach the store's head and agree
            for scope, keys in ((CAMPANAS, ["camp-%d" % i for i in range(CAMPAIGNS)]),
                                ("influencers", ["inf-%d" % i for i in range(INFLUENCERS)])):
                total = 0
                for key in keys:
                    a, b = stats(q1, scope, key, TOTAL), stats(q2, scope, key, TOTAL)
                    self.assertEqual(a, b, "query nodes disagree on %s %s" % (scope, key))
                    total += a["total_impresiones"] + a["total_conversiones"]
                self.assertEqual(total, TOTAL, "statistics by %s do not add up" % scope)

            # read your own write through the bus: the 202 has no position;
            # the client polls the by-id query until its event is there
            status, _, js, raw = api.post("imp", {"id": "ryw", K_CAMPANA: "camp-ryw"})
            self.assertEqual(status, 202, raw)
            self.assertNotIn("position", js)
            deadline = time.monotonic() + 15
            status = None
            while time.monotonic() < deadline and status != 200:
                status, hdrs, js, _ = q2.request("GET", "/tracking/queries/impresiones/ryw")
                time.sleep(0.02)
            self.assertEqual(status, 200)
            self.assertEqual(js["position"], TOTAL + 1)

            # the roles are where they say they are
            status, _, js, _ = api.request("GET", "/tracking/queries/impresiones/ryw")
            self.assertEqual(status, 404)
            self.assertIn("api", js["error"])
            status, _, _, _ = q1.post("imp", {K_CAMPANA: "x"})
            self.assertEqual(status, 404)
            _, _, _, metrics = handlers[1].request("GET", "/metrics")
            self.assertIn(b'rastro_handler_commands_total{result="appended"}', metrics)
            for n in nodes:
                n.stop()
        finally:
            for n in nodes:
                if n.running():
                    n.dump_log("left running")
                n.kill()
                n.cleanup()
            nats.cleanup()

    def test_a_lost_event_is_filled_or_reported_never_skipped(self):
        """An event deleted from TRACKING_EVENTS (a lost message): a query
        node with --store fills it from the store; one with only the bus
        stops before it and reports the gap on /metrics."""
        nats = NatsServer().start()
        url = migrated("gap")
        bus = ["--bus", nats.url]
        writer = Server(extra_args=bus + ["--role", "api,handler,relay", "--store", url])
        nodes = [writer]
        try:
            writer.start()
            post_and_publish(self, nats, writer, "gap", "c-gap", 10)
            # then lose number 5
            answer = json.loads(nats_request(nats.port, "$JS.API.STREAM.MSG.DELETE.TRACKING_EVENTS",
                                             json.dumps({"seq": 5, "no_erase": True})))
            self.assertTrue(answer.get("success"), answer)
            with_store = Server(extra_args=bus + ["--role", "query", "--store", url])
            bus_only = Server(extra_args=bus + ["--role", "query"])
            nodes += [with_store, bus_only]
            with_store.start()
            bus_only.start()
            js = stats(with_store, CAMPANAS, "c-gap", 10)
            self.assertEqual(js["total_impresiones"], 10)
            deadline = time.monotonic() + 30
            gap_errors = 0
            while time.monotonic() < deadline and gap_errors == 0:
                _, _, _, m = bus_only.request("GET", "/metrics")
                for line in m.decode().splitlines():
                    if line.startswith('rastro_projection_errors_total{reason="gap"}'):
                        gap_errors = float(line.split()[-1])
                time.sleep(0.1)
            self.assertGreater(gap_errors, 0, "the bus-only node did not report the gap")
            status, hdrs, js, _ = bus_only.request(
                "GET", "/tracking/queries/%s/%s/estadisticas" % (CAMPANAS, enc("c-gap")))
            self.assertEqual(status, 200)
            self.assertEqual(js["total_impresiones"], 4, "applied past the gap, or short of it")
            self.assertEqual(hdrs["x-rastro-position"], "4")
            for n in nodes:
                n.stop()
        finally:
            kill_all(nodes, nats)

    def test_a_gap_longer_than_a_read_is_filled_a_read_at_a_time(self):
        """The first 649 of 700 events purged from TRACKING_EVENTS: a query
        node with --store fills them from the store. Its projector reads at
        most 512 events at a time; a fill on top of a fetch used to deliver
        them all at once, writing past the projector's chunk (the fourteenth
        session's bench crashed a query node so)."""
        nats = NatsServer().start()
        url = migrated("longgap")
        bus = ["--bus", nats.url]
        writer = Server(extra_args=bus + ["--role", "api,handler,relay", "--store", url])
        nodes = [writer]
        total, keep_from = 700, 650
        try:
            writer.start()
            post_and_publish(self, nats, writer, "lg", "c-lg", total)
            answer = json.loads(nats_request(nats.port, "$JS.API.STREAM.PURGE.TRACKING_EVENTS",
                                             json.dumps({"seq": keep_from})))
            self.assertEqual(answer.get("purged"), keep_from - 1, answer)
            node = Server(extra_args=bus + ["--role", "query", "--store", url])
            nodes.append(node)
            node.start()
            try:
                js = stats(node, CAMPANAS, "c-lg", total)
                self.assertEqual(js["total_impresiones"], total)
                status, _, byid, raw = node.request("GET", "/tracking/queries/impresiones/lg-0")
                self.assertEqual(status, 200, raw)
                self.assertEqual(byid["id"], "lg-0")
            except Exception:
                node.dump_log("query node")     # a crash's report is there
                raise
            for n in nodes:
                n.stop()
        finally:
            kill_all(nodes, nats)


if __name__ == "__main__":
    unittest.main(verbosity=2)
