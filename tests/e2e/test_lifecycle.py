"""
End-to-end tests of the process lifecycle and the CLI: restart on the same
data folder, `rastro rebuild`, `rastro events`, SIGTERM with work in flight,
concurrent commands, and --help/--version.
"""

import http.client
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import struct
import sys
import tempfile
import threading
import time
import unittest
from decimal import Decimal

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (CAMPANAS, EVENT_KEYS, K_CAMPANA, KIND_QUERY,  # noqa: E402
                     KIND_STREAM, KIND_TYPE, UUID_RE, Server, ServerTestCase, enc, events,
                     free_port, json_decimal, metric, post_bytes, rastro, wait_for,
                     with_params)

Q = "/tracking/queries"


def query_paths(campaigns, influencers, imp_ids, conv_ids):
    """Every list, page, statistics and by-id query over the given owners and ids."""
    paths = []
    for base, owners in ((Q + "/" + CAMPANAS, campaigns), (Q + "/influencers", influencers)):
        for owner in list(owners) + ["lc-nobody"]:
            o = enc(owner)
            paths += ["%s/%s/impresiones?limit=1000" % (base, o),
                      "%s/%s/conversiones?limit=1000" % (base, o),
                      "%s/%s/impresiones?limit=7&offset=3" % (base, o),
                      "%s/%s/conversiones?limit=3&offset=1" % (base, o),
                      "%s/%s/estadisticas" % (base, o)]
    paths += ["%s/impresiones/%s" % (Q, enc(i)) for i in imp_ids]
    paths += ["%s/conversiones/%s" % (Q, enc(i)) for i in conv_ids]
    return paths


class LifecycleCase(unittest.TestCase):
    """Tests that manage their own servers; logs are printed when a test fails."""

    def setUp(self):
        self.servers = []
        self.dirs = []

    def tearDown(self):
        for srv in self.servers:
            if srv.running():
                srv.kill()
            srv.cleanup()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)

    def run(self, result=None):
        if result is None:
            result = self.defaultTestResult()
        before = len(result.failures) + len(result.errors)
        self._dump_on_failure = []
        out = super().run(result)
        if len(result.failures) + len(result.errors) > before:
            for srv in self._dump_on_failure:
                srv.dump_log("after failed test %s" % self.id(), tail_lines=80)
        return out

    def new_data_dir(self):
        d = tempfile.mkdtemp(prefix="rastro-e2e-data-")
        self.dirs.append(d)
        return d

    def start_server(self, data_dir):
        srv = Server(data_dir=data_dir)
        self.servers.append(srv)
        self._dump_on_failure.append(srv)
        return srv.start()

    def post_ok(self, srv, kind, body):
        status, _, js, raw = srv.post(kind, body)
        self.assertEqual(status, 202, "POST %s %r -> %d %r" % (kind, body, status, raw[:300]))
        if body.get("id"):
            self.assertEqual(js["id"], body["id"])
        return js

    def capture(self, srv, paths, min_position):
        """GETs every path with min_position; asserts 200 + header; returns path -> JSON."""
        out = {}
        for p in paths:
            full = with_params(p, min_position=min_position)
            status, headers, _, raw = srv.request("GET", full)
            self.assertEqual(status, 200, "GET %s -> %d %r" % (full, status, raw[:300]))
            self.assertIn("x-rastro-position", headers, "GET %s: no X-Rastro-Position" % full)
            self.assertGreaterEqual(int(headers["x-rastro-position"]), min_position,
                                    "GET %s: X-Rastro-Position below min_position" % full)
            out[p] = json_decimal(raw)
        return out

    def assert_same_answers(self, before, after, what):
        self.assertEqual(sorted(before), sorted(after))
        for p in before:
            self.assertEqual(after[p], before[p], "%s: GET %s answers differently" % (what, p))


class CliTest(unittest.TestCase):

    def test_help(self):
        cp = rastro("--help")
        self.assertEqual(cp.returncode, 0, "rastro --help exited %d: %s" % (cp.returncode,
                                                                           cp.stderr[-2000:]))
        for word in ("serve", "rebuild", "events"):
            self.assertIn(word, cp.stdout, "--help (stdout) must mention %r:\n%s"
                          % (word, cp.stdout))

    def test_version(self):
        cp = rastro("--version")
        self.assertEqual(cp.returncode, 0, "rastro --version exited %d: %s"
                         % (cp.returncode, cp.stderr[-2000:]))
        self.assertRegex(cp.stdout, r"\d+\.\d+", "--version must print a version number")

    def test_unknown_command(self):
        for args in (("frobnicate",), ("servex",)):
            with self.subTest(args=args):
                cp = rastro(*args, timeout=30)
                self.assertNotEqual(cp.returncode, 0, "rastro %s must fail" % " ".join(args))
                self.assertTrue((cp.stderr + cp.stdout).strip(),
                                "rastro %s must say what is wrong" % " ".join(args))


class RestartTest(LifecycleCase):

    def test_restart_keeps_everything(self):
        data = self.new_data_dir()
        srv = self.start_server(data)
        imp_ids, conv_ids = [], []
        head = 0
        for n in range(24):
            kind = "conv" if n % 3 == 0 else "imp"
            body = {"id": "rs-%s-%d" % (kind, n), K_CAMPANA: "rs-c%d" % (n % 3),
                    "influencer_id": "rs-i%d" % (n % 2), "usuario_id": "u%d" % n,
                    "timestamp": "2026-11-28T10:%02d:00Z" % n}
            if kind == "conv":
                body.update({"valor": ["0.1", 0.2, 12.5, 3][n % 4],
                             "moneda": ["USD", "EUR"][n % 2]})
            js = self.post_ok(srv, kind, body)
            self.assertEqual(js["position"], head + 1, "positions are consecutive")
            head = js["position"]
            (imp_ids if kind == "imp" else conv_ids).append(body["id"])
        # one more without id and without timestamp (server defaults must persist too)
        js = self.post_ok(srv, "imp", {K_CAMPANA: "rs-c0", "influencer_id": "rs-i0"})
        head = js["position"]
        imp_ids.append(js["id"])

        paths = query_paths(["rs-c0", "rs-c1", "rs-c2"], ["rs-i0", "rs-i1"], imp_ids, conv_ids)
        before = self.capture(srv, paths, head)
        stats = before["%s/%s/rs-c0/estadisticas" % (Q, CAMPANAS)]
        self.assertGreater(stats["total_impresiones"] + stats["total_conversiones"], 0,
                           "sanity: the captured campaign has data")
        rc = srv.stop()
        self.assertEqual(rc, 0, "SIGTERM must end the server with exit code 0")
        log_before = events(data)
        self.assertEqual(len(log_before), head)

        srv2 = self.start_server(data)
        after = self.capture(srv2, paths, head)
        self.assert_same_answers(before, after, "after a restart")
        # new events continue after the old ones
        js = self.post_ok(srv2, "imp", {"id": "rs-new", K_CAMPANA: "rs-c0"})
        self.assertEqual(js["position"], head + 1, "positions continue after a restart")
        js2 = self.post_ok(srv2, "conv", {"id": "rs-new", K_CAMPANA: "rs-c0", "valor": 1})
        self.assertEqual(js2["position"], head + 2)
        # replaying an old command after the restart is still idempotent
        status, _, again, _ = srv2.post("imp", {"id": "rs-imp-1", K_CAMPANA: "rs-c1",
                                                "influencer_id": "rs-i1", "usuario_id": "u1",
                                                "timestamp": "2026-11-28T10:01:00Z"})
        self.assertEqual(status, 202)
        self.assertEqual(again["position"], 2, "replay after restart must give the old answer")
        status, _, _, _ = srv2.post("imp", {"id": "rs-imp-1", K_CAMPANA: "other"})
        self.assertEqual(status, 409, "id conflicts survive a restart")
        got = self.capture(srv2, ["%s/%s/rs-c0/estadisticas" % (Q, CAMPANAS)], head + 2)
        new_stats = list(got.values())[0]
        self.assertEqual(new_stats["total_impresiones"], stats["total_impresiones"] + 1)
        self.assertEqual(new_stats["total_conversiones"], stats["total_conversiones"] + 1)
        self.assertEqual(srv2.stop(), 0)
        log_after = events(data)
        self.assertEqual(log_after[:head], log_before, "a restart must not change the log")
        self.assertEqual([e["position"] for e in log_after], list(range(1, head + 3)))


def _rebuild_workload(n_events=200, seed=20261128):
    rng = random.Random(seed)
    camps = ["rb-c1", "rb-c2", "rb-c3", "rb c/4 \u00f1", "rb-usd"]
    infs = ["rb-i1", "rb-i2", "rb i/3", None]
    out = []
    for n in range(n_events):
        kind = "conv" if rng.random() < 0.4 else "imp"
        camp = rng.choice(camps)
        body = {("campana_id" if n % 7 == 0 else K_CAMPANA): camp}
        if n % 3:
            body["id"] = "rb-%s-%d" % (kind, n)
        inf = rng.choice(infs)
        if inf is not None:
            body["influencer_id"] = inf
        if rng.random() < 0.7:
            body["usuario_id"] = "u%d" % rng.randint(1, 30)
        if rng.random() < 0.6:
            body["timestamp"] = "2026-11-%02dT%02d:%02d:%02d+0%d:00" % (
                rng.randint(1, 28), rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59),
                rng.randint(0, 5))
        if rng.random() < 0.2:
            body.update({"user_agent": "UA \u00f1 %d" % n, "ip_address": "10.0.%d.%d"
                         % (n % 256, rng.randint(0, 255)), "referrer": "https://r.example/%d" % n})
        if rng.random() < 0.1:
            body["tipo_evento"] = rng.choice(["VIEW", "CLICK_2", "x-y"])
        if kind == "conv":
            dec = Decimal(rng.randint(0, 10 ** 8)) / Decimal(10000)
            body["valor"] = str(dec) if rng.random() < 0.5 else float(dec)
            body["moneda"] = "USD" if camp == "rb-usd" else rng.choice(
                ["USD", "EUR", "COP", "MXN", None])
            body["tipo_conversion"] = rng.choice(
                ["VENTA", "REGISTRO", "SUSCRIPCION", "DESCARGAR", "CLICK", None])
        out.append((kind, {k: v for k, v in body.items() if v is not None}, camp, inf))
    return camps, [i for i in infs if i is not None], out


class RebuildTest(LifecycleCase):

    def test_rebuild_equals_incremental(self):
        data = self.new_data_dir()
        srv = self.start_server(data)
        camps, infs, workload = _rebuild_workload()
        ids = {"imp": [], "conv": []}
        count = {"imp": 0, "conv": 0}
        head = 0
        for kind, body, _, _ in workload:
            js = self.post_ok(srv, kind, body)
            self.assertEqual(js["position"], head + 1)
            head = js["position"]
            ids[kind].append(js["id"])
            count[kind] += 1
        paths = query_paths(camps, infs, ids["imp"], ids["conv"])
        before = self.capture(srv, paths, head)
        # sanity: the answers hold the workload (so equality below means something)
        tot_i = sum(before["%s/%s/%s/estadisticas" % (Q, CAMPANAS, enc(c))]["total_impresiones"]
                    for c in camps)
        tot_c = sum(before["%s/%s/%s/estadisticas" % (Q, CAMPANAS, enc(c))]["total_conversiones"]
                    for c in camps)
        self.assertEqual((tot_i, tot_c), (count["imp"], count["conv"]),
                         "campaign totals must add up to the posted events")
        usd = before["%s/%s/rb-usd/estadisticas" % (Q, CAMPANAS)]
        if usd["total_conversiones"]:
            self.assertEqual(set(usd["valor_por_moneda"]), {"USD"})
            self.assertEqual(usd["valor_total_conversiones"], usd["valor_por_moneda"]["USD"])
        self.assertEqual(srv.stop(), 0)
        log_before = events(data)
        self.assertEqual(len(log_before), head)

        cp = rastro("rebuild", "--data", data)
        self.assertEqual(cp.returncode, 0, "rastro rebuild exited %d\nstdout:%s\nstderr:%s"
                         % (cp.returncode, cp.stdout[-3000:], cp.stderr[-3000:]))
        # what the operator is told: how many events, how fast, how much memory
        m = re.search(r"rebuilt read models from (\d+) events .* (\d+) events/s, "
                      r"peak memory (\d+) MiB", cp.stdout)
        self.assertIsNotNone(m, cp.stdout)
        self.assertEqual(int(m.group(1)), head)
        self.assertGreater(int(m.group(3)), 0)
        self.assertEqual(events(data), log_before, "rebuild must not touch the event log")

        srv2 = self.start_server(data)
        after = self.capture(srv2, paths, head)
        self.assert_same_answers(before, after, "after rastro rebuild")
        # the rebuilt read models are not behind: without min_position too
        _, headers, _, _ = srv2.request("GET", Q + "/impresiones/" + enc(ids["imp"][-1]))
        deadline = time.monotonic() + 10
        while int(headers.get("x-rastro-position", "0")) < head and time.monotonic() < deadline:
            time.sleep(0.05)
            _, headers, _, _ = srv2.request("GET", Q + "/impresiones/" + enc(ids["imp"][-1]))
        self.assertGreaterEqual(int(headers.get("x-rastro-position", "0")), head)
        js = self.post_ok(srv2, "conv", {"id": "rb-extra", K_CAMPANA: "rb-c1", "valor": 1,
                                         "moneda": "USD", "influencer_id": "rb-i1"})
        self.assertEqual(js["position"], head + 1, "positions continue after a rebuild")
        paths2 = paths + ["%s/conversiones/rb-extra" % Q]
        mid = self.capture(srv2, paths2, head + 1)
        self.assertEqual(
            mid["%s/%s/rb-c1/estadisticas" % (Q, CAMPANAS)]["total_conversiones"],
            before["%s/%s/rb-c1/estadisticas" % (Q, CAMPANAS)]["total_conversiones"] + 1,
            "the rebuilt read models keep following new events")
        self.assertEqual(srv2.stop(), 0)

        # rebuilding again (events appended after a rebuild) gives the same answers
        cp = rastro("rebuild", "--data", data)
        self.assertEqual(cp.returncode, 0, "second rebuild: %s" % cp.stderr[-3000:])
        # the replaced read models' index files go with them, server or not
        left = sorted(f for f in os.listdir(data) if f.startswith("rm-") and
                      (f.endswith(".ids") or f.endswith(".lists")))
        self.assertEqual(len(left), 2, "index files after a rebuild: %s" % left)
        srv3 = self.start_server(data)
        again = self.capture(srv3, paths2, head + 1)
        self.assert_same_answers(mid, again, "after a second rastro rebuild")
        self.assertEqual(srv3.stop(), 0)


class SchemaUpgradeTest(LifecycleCase):
    """Read models written by an older rastro are rebuilt from the log when
    the server starts; ones from a newer rastro are refused, by name."""

    def _set_version(self, data, version, also_sql=""):
        db = sqlite3.connect(os.path.join(data, "readmodels.db"))
        try:
            if also_sql:
                db.execute(also_sql)
            db.execute("PRAGMA user_version=%d" % version)
            db.commit()
        finally:
            db.close()

    def _version(self, data):
        db = sqlite3.connect(os.path.join(data, "readmodels.db"))
        try:
            return db.execute("PRAGMA user_version").fetchone()[0]
        finally:
            db.close()

    def test_older_read_models_rebuilt_on_start(self):
        data = self.new_data_dir()
        srv = self.start_server(data)
        head = 0
        for n in range(12):
            body = {K_CAMPANA: "up-c%d" % (n % 3), "influencer_id": "up-i"}
            if n % 2:
                body.update({"valor": "1.25", "moneda": "USD" if n % 3 else "EUR"})
            head = self.post_ok(srv, "conv" if n % 2 else "imp", body)["position"]
        paths = ["%s/%s/up-c%d/estadisticas" % (Q, CAMPANAS, c) for c in range(3)]
        paths.append(Q + "/influencers/up-i/estadisticas")
        before = self.capture(srv, paths, head)
        self.assertEqual(before[paths[-1]]["total_conversiones"], 6)
        self.assertEqual(srv.stop(), 0)
        current = self._version(data)
        # an "older" file whose statistics are wrong: only the log can mend them
        self._set_version(data, current - 1, "UPDATE stats SET impresiones = impresiones + 100")

        srv2 = self.start_server(data)
        self.assertIn("rebuilding them from the event log", srv2.read_log())
        after = self.capture(srv2, paths, head)
        self.assert_same_answers(before, after, "after the upgrade rebuild")
        self.assertEqual(self.post_ok(srv2, "imp", {K_CAMPANA: "up-c0"})["position"], head + 1)
        self.assertEqual(srv2.stop(), 0)
        self.assertEqual(self._version(data), current)

    def test_newer_read_models_refused(self):
        data = self.new_data_dir()
        srv = self.start_server(data)
        self.post_ok(srv, "imp", {K_CAMPANA: "nw-c"})
        self.assertEqual(srv.stop(), 0)
        current = self._version(data)
        self._set_version(data, current + 1)
        cp = rastro("serve", "--listen", "127.0.0.1:%d" % free_port(), "--data", data)
        self.assertNotEqual(cp.returncode, 0, "serve must refuse read models it cannot know")
        self.assertIn("written by a newer rastro", cp.stdout + cp.stderr)
        self.assertEqual(self._version(data), current + 1, "and leave them as they are")


class RebuildWhileRunningTest(ServerTestCase):

    def test_rebuild_refused_while_serving(self):
        p = 0
        for n in range(5):
            p = self.post_ok("imp" if n % 2 else "conv",
                             {K_CAMPANA: "rr-c", "valor": 2, "moneda": "EUR"}
                             if n % 2 == 0 else {K_CAMPANA: "rr-c"})["position"]
        before, _, _ = self.query("%s/%s/rr-c/estadisticas" % (Q, CAMPANAS), min_position=p)
        cp = rastro("rebuild", "--data", self.server.data_dir)
        self.assertNotEqual(cp.returncode, 0,
                            "rastro rebuild must refuse while the server runs")
        self.assertTrue((cp.stderr + cp.stdout).strip(), "the refusal needs a message")
        self.assertTrue(self.server.running(), "the server must survive a refused rebuild")
        status, _, js, _ = self.server.request("GET", "/tracking/health")
        self.assertEqual(status, 200)
        after, _, _ = self.query("%s/%s/rr-c/estadisticas" % (Q, CAMPANAS), min_position=p)
        self.assertEqual(after, before, "a refused rebuild must not change the read models")
        self.assertEqual((after["total_impresiones"], after["total_conversiones"]), (2, 3))
        js = self.post_ok("imp", {K_CAMPANA: "rr-c"})
        self.assertEqual(js["position"], p + 1, "the server keeps working after the refusal")


class EventsCliTest(ServerTestCase):
    """`rastro events` while the server runs (the restart/SIGTERM tests run it stopped)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.posted = []   # (kind, body, answer)
        bodies = [
            ("imp", {"id": "ev-i1", K_CAMPANA: "ev-c", "influencer_id": "ev-inf",
                     "timestamp": "2026-11-28T10:15:00+02:00"}),
            ("conv", {"id": "ev-c1", K_CAMPANA: "ev-c", "valor": 12.5, "moneda": "USD",
                      "tipo_conversion": "CLICK"}),
            ("imp", {"id": "ev-i2", K_CAMPANA: "ev-c", "usuario_id": "u2"}),
            ("conv", {"id": "ev-i2", K_CAMPANA: "ev-c"}),
            ("imp", {"id": "ev-\u00f1 /x", K_CAMPANA: "ev-c2", "user_agent": "UA"}),
            ("conv", {K_CAMPANA: "ev-c2", "valor": "0.1"}),
        ]
        for kind, body in bodies:
            status, _, js, raw = cls.server.post(kind, body)
            if status != 202:
                cls.server.dump_log("fixture POST failed")
                raise AssertionError("fixture POST %r -> %d %r" % (body, status, raw))
            cls.posted.append((kind, body, js))
        # wait until the projections have everything (not needed for the log,
        # but keeps the server quiet while the CLI reads)
        cls.server.get("%s/%s/ev-c2/estadisticas" % (Q, CAMPANAS),
                       min_position=cls.posted[-1][2]["position"])

    def positions(self, *args):
        return [e["position"] for e in events(self.server.data_dir, *args)]

    def test_all_events(self):
        evs = events(self.server.data_dir)
        self.assertEqual(len(evs), len(self.posted), "one JSON line per event")
        seen_event_ids = set()
        for ev, (kind, body, ans) in zip(evs, self.posted):
            with self.subTest(position=ans["position"]):
                self.assertTrue(EVENT_KEYS <= set(ev), "missing keys %s in %r"
                                % (EVENT_KEYS - set(ev), ev))
                self.assertEqual(ev["position"], ans["position"])
                self.assertRegex(ev["event_id"], UUID_RE)
                self.assertNotIn(ev["event_id"], seen_event_ids, "event_id must be unique")
                seen_event_ids.add(ev["event_id"])
                self.assertEqual(ev["stream_id"], KIND_STREAM[kind] + ans["id"])
                self.assertEqual(ev["stream_version"], 1)
                self.assertEqual(ev["type"], KIND_TYPE[kind])
                self.assertIsInstance(ev["schema_version"], int)
                self.assertGreaterEqual(ev["schema_version"], 1)
                self.assertIsInstance(ev["recorded_at"], str)
                self.assertIsInstance(ev["data"], dict)
                self.assertEqual(ev["data"].get("id"), ans["id"])
                self.assertEqual(ev["data"].get(K_CAMPANA), body[K_CAMPANA])
                if kind == "conv":
                    self.assertEqual(ev["data"].get("moneda"), body.get("moneda", "COP"))
                    self.assertEqual(Decimal(str(ev["data"].get("valor"))),
                                     Decimal(str(body.get("valor", 0))))
                    self.assertEqual(ev["data"].get("tipo_conversion"),
                                     body.get("tipo_conversion", "VENTA"))
                self.assertIsInstance(ev["metadata"], dict)
                self.assertIn("correlation_id", ev["metadata"])
                self.assertIn("causation_id", ev["metadata"])
        self.assertEqual([e["position"] for e in evs], list(range(1, len(self.posted) + 1)))

    def test_from_and_limit(self):
        self.assertEqual(self.positions("--from", "3"), [3, 4, 5, 6], "--from is inclusive")
        self.assertEqual(self.positions("--from", "1"), [1, 2, 3, 4, 5, 6])
        self.assertEqual(self.positions("--limit", "2"), [1, 2])
        self.assertEqual(self.positions("--from", "2", "--limit", "3"), [2, 3, 4])
        self.assertEqual(self.positions("--from", "7"), [], "past the end: nothing")

    def test_type_filter(self):
        self.assertEqual(self.positions("--type", "ConversionRegistrada"), [2, 4, 6])
        self.assertEqual(self.positions("--type", "ImpresionRegistrada"), [1, 3, 5])
        self.assertEqual(self.positions("--type", "ImpresionRegistrada", "--from", "2",
                                        "--limit", "1"), [3])

    def test_stream_filter(self):
        self.assertEqual(self.positions("--stream", "impresion:ev-i2"), [3])
        self.assertEqual(self.positions("--stream", "conversion:ev-i2"), [4])
        self.assertEqual(self.positions("--stream", "impresion:ev-\u00f1 /x"), [5])
        self.assertEqual(self.positions("--stream", "impresion:ev-nope"), [])


class SigtermTest(LifecycleCase):

    def test_sigterm_with_work_in_flight(self):
        data = self.new_data_dir()
        srv = self.start_server(data)
        lock = threading.Lock()
        acked, problems = [], []
        state = {"sigterm": False}
        stop = threading.Event()

        def worker(t):
            n = 0
            while not stop.is_set():
                kind = "imp" if (n + t) % 2 else "conv"
                id_ = "st-%d-%d" % (t, n)
                n += 1
                body = {"id": id_, K_CAMPANA: "st-c", "influencer_id": "st-i%d" % (t % 2)}
                try:
                    status, _, js, raw = srv.post(kind, body)
                except (OSError, http.client.HTTPException) as ex:
                    with lock:
                        if not state["sigterm"]:
                            problems.append("%s failed before SIGTERM: %r" % (id_, ex))
                    return
                with lock:
                    if status == 202:
                        acked.append((kind, id_, js["position"]))
                    elif not (status == 503 and state["sigterm"]):
                        problems.append("%s -> %d %r" % (id_, status, raw[:200]))

        threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(6)]
        for th in threads:
            th.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with lock:
                if len(acked) >= 80 or problems:
                    break
            time.sleep(0.01)
        with lock:
            state["sigterm"] = True
        rc = srv.stop(check=False)          # SIGTERM to our server's PID, wait <= 30 s
        time.sleep(0.2)
        stop.set()
        for th in threads:
            th.join(timeout=40)
            self.assertFalse(th.is_alive(), "a client thread hung")
        self.assertEqual(problems, [], "unexpected answers")
        self.assertEqual(rc, 0, "SIGTERM with requests in flight must exit 0")
        self.assertGreaterEqual(len(acked), 1, "no command was accepted before SIGTERM")

        # every acknowledged command is in the log, at the position it was given
        evs = events(data)
        self.assertEqual([e["position"] for e in evs], list(range(1, len(evs) + 1)),
                         "the log must be gap-free")
        by_stream = {e["stream_id"]: e["position"] for e in evs}
        for kind, id_, pos in acked:
            self.assertEqual(by_stream.get(KIND_STREAM[kind] + id_), pos,
                             "acknowledged %s %s (position %d) is missing from the log"
                             % (kind, id_, pos))

        # and the restarted server's read models hold all of them
        srv2 = self.start_server(data)
        head = len(evs)
        acked.sort(key=lambda a: a[2])
        for kind, id_, pos in acked[:10] + acked[-60:]:
            js = self.capture(srv2, ["%s/%s/%s" % (Q, KIND_QUERY[kind], enc(id_))],
                              head).popitem()[1]
            self.assertEqual(js["position"], pos)
        stats = self.capture(srv2, ["%s/%s/st-c/estadisticas" % (Q, CAMPANAS)],
                             head).popitem()[1]
        self.assertEqual(stats["total_impresiones"] + stats["total_conversiones"], head,
                         "the read models must count every logged event exactly once")
        js = self.post_ok(srv2, "imp", {K_CAMPANA: "st-c"})
        self.assertEqual(js["position"], head + 1)
        self.assertEqual(srv2.stop(), 0)

    def test_sigterm_drains(self):
        """After SIGTERM, while a commit in flight holds the shutdown up, new
        requests get a clear 503 and the connection is closed; the liveness
        probe still answers; the commit in flight completes; exit 0."""
        data = self.new_data_dir()
        srv = self.start_server(data)
        self.post_ok(srv, "imp", {"id": "dr-0", K_CAMPANA: "dr"})
        lock = sqlite3.connect(os.path.join(data, "events.db"), timeout=5, isolation_level=None)
        stuck = {}

        def post_stuck():
            try:
                status, _, js, raw = srv.post("imp", {"id": "dr-1", K_CAMPANA: "dr"})
                stuck["answer"] = (status, js)
            except (OSError, http.client.HTTPException) as ex:
                stuck["answer"] = ("error", repr(ex))

        th = threading.Thread(target=post_stuck, daemon=True)
        try:
            lock.execute("BEGIN IMMEDIATE")     # the committer now waits for the store
            th.start()
            time.sleep(0.3)
            self.assertNotIn("answer", stuck, "the POST should be waiting for its commit")
            srv.signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            status = None
            while time.monotonic() < deadline:
                status, headers, js, raw = srv.request("GET", "/tracking/health")
                if status == 503:
                    break
                time.sleep(0.02)
            self.assertEqual(status, 503, "GET /tracking/health while draining: %r" % raw[:200])
            self.assertEqual(js.get("error"), "shutting down; retry")
            self.assertEqual(headers.get("retry-after"), "1")
            self.assertEqual(headers.get("connection", "").lower(), "close")
            status, headers, js, raw = srv.post("conv", {"id": "dr-2", K_CAMPANA: "dr"})
            self.assertEqual((status, js.get("error")), (503, "shutting down; retry"), raw[:200])
            status, _, _, raw = srv.request("GET", "/health/live")
            self.assertEqual(status, 200, "liveness while draining: %r" % raw[:200])
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        th.join(timeout=15)
        self.assertFalse(th.is_alive(), "the POST in flight never got an answer")
        self.assertEqual(srv.stop(check=False), 0, "a drained server must exit 0")
        streams = [e["stream_id"] for e in events(data)]
        self.assertNotIn(KIND_STREAM["conv"] + "dr-2", streams, "a refused command was stored")
        if stuck["answer"][0] == 202:
            self.assertIn(KIND_STREAM["imp"] + "dr-1", streams, "an acknowledged POST is lost")
        else:
            self.assertEqual(stuck["answer"][0], 503, "the POST in flight: %r" % (stuck["answer"],))

    def test_client_gone_while_committing(self):
        """A client resets its connection while its command waits for the
        store (held by another writer), and another command arrives behind
        it: the server forgets the connection but not the command (its
        context is not reused while the committer holds it), both commits
        complete, the retry with the same id gets the first answer, the
        metric counts it, and the server exits 0 (under ASan: nothing used
        after it was freed, nothing leaked)."""
        data = self.new_data_dir()
        srv = self.start_server(data)
        self.post_ok(srv, "imp", {"id": "gone-0", K_CAMPANA: "gone"})
        second = {}

        def post_second():
            second["answer"] = srv.post("imp", {"id": "gone-2", K_CAMPANA: "gone"})

        th = threading.Thread(target=post_second, daemon=True)
        lock = sqlite3.connect(os.path.join(data, "events.db"), timeout=5, isolation_level=None)
        try:
            lock.execute("BEGIN IMMEDIATE")     # the committer now waits for the store
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            sock.sendall(post_bytes({"id": "gone-1", K_CAMPANA: "gone"}))
            time.sleep(0.3)
            # the answer cannot have come: the store is held
            sock.setblocking(False)
            with self.assertRaises(BlockingIOError):
                sock.recv(1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()                        # RST, while the command is parked
            wait_for(lambda: metric(srv, "rastro_http_commands_unanswered_total") == 1, 5,
                     "the reset connection counted as unanswered")
            th.start()
            time.sleep(0.3)
            self.assertNotIn("answer", second, "the second POST should wait for the store")
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        th.join(timeout=10)
        status, _, js, raw = second["answer"]
        self.assertEqual((status, js.get("position")), (202, 3), raw)
        js = self.post_ok(srv, "imp", {"id": "gone-1", K_CAMPANA: "gone"})
        self.assertEqual(js["position"], 2, "the first attempt's commit stands")
        self.assertEqual(metric(srv, "rastro_appends_rejected_total{reason=\"duplicate\"}"), 1)
        self.assertEqual(srv.stop(check=False), 0, "exit code after a parked command lost its client")
        self.assertEqual([(e["stream_id"], e["data"]["id"]) for e in events(data)],
                         [(KIND_STREAM["imp"] + i, i) for i in ("gone-0", "gone-1", "gone-2")])

    def test_sigterm_when_idle(self):
        srv = self.start_server(self.new_data_dir())
        t0 = time.monotonic()
        self.assertEqual(srv.stop(), 0)
        self.assertLess(time.monotonic() - t0, 10, "an idle server must stop promptly")
        # a clean start and stop says nothing alarming (libmicrohttpd's own
        # complaints about its options came out as warnings once)
        noisy = [l for l in srv.read_log().splitlines()
                 if "level=warn" in l or "level=error" in l]
        self.assertEqual(noisy, [])


class KillTest(LifecycleCase):
    """SIGKILL under load: nothing acknowledged is lost, and after a restart
    the idempotency index (rebuilt from the log) and the read models (caught
    up from their checkpoint) know every acknowledged id."""

    def test_sigkill_twice_under_load(self):
        data = self.new_data_dir()
        acked = {}      # (kind, id) -> (body, position)
        for cycle in range(2):
            srv = self.start_server(data)
            lock = threading.Lock()
            stop = threading.Event()

            def worker(t, srv=srv, lock=lock, stop=stop, cycle=cycle):
                n = 0
                while not stop.is_set():
                    kind = "imp" if (n + t) % 3 else "conv"
                    id_ = "k%d-%d-%d" % (cycle, t, n)
                    n += 1
                    body = {"id": id_, K_CAMPANA: "k-c%d" % (n % 3),
                            "influencer_id": "k-i%d" % (t % 2), "usuario_id": "u%d" % n}
                    if kind == "conv":
                        body.update(valor="%d.25" % n, moneda="USD")
                    try:
                        status, _, js, _ = srv.post(kind, body)
                    except (OSError, http.client.HTTPException):
                        return      # the server was killed
                    if status == 202:
                        with lock:
                            acked[(kind, id_)] = (body, js["position"])

            threads = [threading.Thread(target=worker, args=(t,), daemon=True)
                       for t in range(4)]
            for th in threads:
                th.start()
            deadline = time.monotonic() + 20
            target = 400 * (cycle + 1)
            while time.monotonic() < deadline:
                with lock:
                    if len(acked) >= target:
                        break
                time.sleep(0.005)
            srv.kill()                      # SIGKILL our server's PID mid-load
            stop.set()
            for th in threads:
                th.join(timeout=40)
                self.assertFalse(th.is_alive(), "a client thread hung")

            evs = events(data)
            self.assertEqual([e["position"] for e in evs], list(range(1, len(evs) + 1)),
                             "cycle %d: the log must be gap-free" % cycle)
            by_stream = {e["stream_id"]: e["position"] for e in evs}
            self.assertEqual(len(by_stream), len(evs), "a stream was appended twice")
            for (kind, id_), (_, pos) in acked.items():
                self.assertEqual(by_stream.get(KIND_STREAM[kind] + id_), pos,
                                 "cycle %d: acknowledged %s %s missing" % (cycle, kind, id_))

        srv = self.start_server(data)
        head = len(events(data))
        # the same commands again: the first answers, nothing appended
        for (kind, id_), (body, pos) in sorted(acked.items(), key=lambda a: a[1][1]):
            js = self.post_ok(srv, kind, body)
            self.assertEqual(js["position"], pos, "replay of %s %s after SIGKILL" % (kind, id_))
        some = next(iter(acked))
        changed = dict(acked[some][0], usuario_id="someone-else")
        status, _, js, _ = srv.post(some[0], changed)
        self.assertEqual(status, 409, "same id, other payload, after restart")
        self.assertEqual(len(events(data)), head, "replays must append nothing")
        # every acknowledged id is in the read models, counted once
        for (kind, id_), (_, pos) in acked.items():
            js = self.capture(srv, ["%s/%s/%s" % (Q, KIND_QUERY[kind], enc(id_))],
                              head).popitem()[1]
            self.assertEqual(js["position"], pos)
        total = 0
        for c in range(3):
            st = self.capture(srv, ["%s/%s/k-c%d/estadisticas" % (Q, CAMPANAS, c)],
                              head).popitem()[1]
            total += st["total_impresiones"] + st["total_conversiones"]
        self.assertEqual(total, head, "the read models must count every logged event once")
        self.assertEqual(srv.stop(), 0)


class BlockedProjectionTest(LifecycleCase):
    """A read-your-write wait ends at its deadline even when the projector
    cannot write (another process holds the read models' write lock), and
    projection resumes by itself once the lock is gone."""

    def test_min_position_deadline_while_read_models_locked(self):
        import sqlite3
        data = self.new_data_dir()
        srv = self.start_server(data)
        first = self.post_ok(srv, "imp", {"id": "bp-1", K_CAMPANA: "bp"})
        self.capture(srv, [Q + "/impresiones/bp-1"], first["position"])
        lock = sqlite3.connect(os.path.join(data, "readmodels.db"), timeout=5,
                               isolation_level=None)
        try:
            lock.execute("BEGIN IMMEDIATE")
            second = self.post_ok(srv, "imp", {"id": "bp-2", K_CAMPANA: "bp"})
            t0 = time.monotonic()
            status, headers, js, raw = srv.request(
                "GET", with_params(Q + "/impresiones/bp-2", min_position=second["position"],
                                   wait_ms=300))
            took = time.monotonic() - t0
            self.assertEqual(status, 503, raw[:300])
            self.assertIn("retry-after", headers)
            self.assertLess(took, 3.0, "the 300 ms wait took %.1f s" % took)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        got = self.capture(srv, [Q + "/impresiones/bp-2"], second["position"])
        self.assertEqual(got.popitem()[1]["position"], second["position"])
        self.assertEqual(srv.stop(), 0)


class ConcurrencyTest(ServerTestCase):

    THREADS = 8
    TOTAL = 1000

    def test_1_thousand_concurrent_posts(self):
        per_thread = self.TOTAL // self.THREADS
        barrier = threading.Barrier(self.THREADS)
        lock = threading.Lock()
        results, problems = [], []

        def worker(t):
            try:
                barrier.wait(timeout=30)
            except threading.BrokenBarrierError:
                pass
            for n in range(per_thread):
                i = t * per_thread + n
                kind = "conv" if i % 3 == 0 else "imp"
                body = {"id": "cc-%d" % i, K_CAMPANA: "cc-c%d" % (i % 5),
                        "influencer_id": "cc-i%d" % (i % 4)}
                if kind == "conv":
                    body.update({"valor": "0.1", "moneda": "USD"})
                try:
                    status, _, js, raw = self.server.post(kind, body)
                except (OSError, http.client.HTTPException) as ex:
                    with lock:
                        problems.append("cc-%d: %r" % (i, ex))
                    continue
                with lock:
                    if status != 202 or not isinstance(js, dict) or js.get("id") != body["id"]:
                        problems.append("cc-%d -> %d %r" % (i, status, raw[:200]))
                    else:
                        results.append((kind, body["id"], js["position"]))

        threads = [threading.Thread(target=worker, args=(t,), daemon=True)
                   for t in range(self.THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
            self.assertFalse(th.is_alive(), "a client thread hung")
        self.assertEqual(problems[:20], [], "%d of %d commands failed" % (len(problems),
                                                                          self.TOTAL))
        self.assertEqual(len(results), self.TOTAL)
        positions = sorted(r[2] for r in results)
        self.assertEqual(positions, list(range(1, self.TOTAL + 1)),
                         "1000 commands on a fresh data folder get exactly positions 1..1000")

        evs = events(self.server.data_dir)
        self.assertEqual(len(evs), self.TOTAL, "rastro events must list exactly 1000 events")
        streams = [e["stream_id"] for e in evs]
        self.assertEqual(len(set(streams)), self.TOTAL, "each id exactly once in the log")
        by_stream = {e["stream_id"]: e["position"] for e in evs}
        for kind, id_, pos in results:
            self.assertEqual(by_stream.get(KIND_STREAM[kind] + id_), pos,
                             "%s %s: the log's position differs from the 202's" % (kind, id_))

        # the projections saw every event exactly once
        n_conv = sum(1 for r in results if r[0] == "conv")
        tot_i = tot_c = 0
        for c in range(5):
            _, _, raw = self.query("%s/%s/cc-c%d/estadisticas" % (Q, CAMPANAS, c),
                                   min_position=self.TOTAL)
            js = json_decimal(raw)
            tot_i += js["total_impresiones"]
            tot_c += js["total_conversiones"]
        self.assertEqual((tot_i, tot_c), (self.TOTAL - n_conv, n_conv))
        _, _, raw = self.query("%s/influencers/cc-i0/estadisticas" % Q, min_position=self.TOTAL)
        js = json_decimal(raw)
        want_conv = sum(1 for r in results if r[0] == "conv" and int(r[1][3:]) % 4 == 0)
        self.assertEqual(js["total_conversiones"], want_conv)
        self.assertEqual(js["valor_por_moneda"], {"USD": Decimal("0.1") * want_conv},
                         "exact money under concurrency")

    def test_2_concurrent_replays_of_the_same_ids(self):
        barrier = threading.Barrier(self.THREADS)
        lock = threading.Lock()
        answers = {}      # id -> list of (status, body)

        def worker():
            try:
                barrier.wait(timeout=30)
            except threading.BrokenBarrierError:
                pass
            for k in range(10):
                body = {"id": "cr-%d" % k, K_CAMPANA: "cr-c", "usuario_id": "u%d" % k}
                try:
                    status, _, js, _ = self.server.post("imp", body)
                except (OSError, http.client.HTTPException) as ex:
                    status, js = -1, repr(ex)
                with lock:
                    answers.setdefault(body["id"], []).append((status, js))

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(self.THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
            self.assertFalse(th.is_alive(), "a client thread hung")
        head = 0
        for id_, got in sorted(answers.items()):
            self.assertEqual(len(got), self.THREADS)
            for status, js in got:
                self.assertEqual(status, 202, "%s: %r" % (id_, js))
                self.assertEqual(js, got[0][1], "%s: concurrent replays must answer alike" % id_)
            head = max(head, got[0][1]["position"])
            self.assertEqual(len(events(self.server.data_dir, "--stream", "impresion:" + id_)),
                             1, "%s: one event despite concurrent replays" % id_)
        js, _, _ = self.query("%s/%s/cr-c/estadisticas" % (Q, CAMPANAS), min_position=head)
        self.assertEqual(js["total_impresiones"], 10)


if __name__ == "__main__":
    unittest.main()
