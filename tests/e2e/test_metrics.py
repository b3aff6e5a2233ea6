"""
End-to-end tests of GET /metrics: the Prometheus text format passes
`promtool check metrics` (Debian's prometheus package), and the counters
move by exactly what the requests did.
"""

import os
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sqlite3  # noqa: E402
import time  # noqa: E402

from harness import K_CAMPANA, Server, ServerTestCase, http_request, parse_metrics as parse  # noqa: E402,E501

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


class MetricsTest(ServerTestCase):

    def scrape(self):
        status, headers, _, raw = self.server.request("GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers.get("content-type", "").startswith("text/plain"),
                        headers.get("content-type"))
        return raw.decode("utf-8")

    def test_promtool_accepts_the_exposition(self):
        self.post_ok("imp", {K_CAMPANA: "m-c"})
        self.server.request("GET", "/tracking/queries/campanas/m-c/estadisticas")
        text = self.scrape()
        self.assertTrue(os.path.exists(PROMTOOL), "promtool missing (Debian package prometheus)")
        p = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(),
                           capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 0, "promtool: %s %s" % (p.stdout, p.stderr))
        for name in ("rastro_events_stored_total", "rastro_store_size_bytes",
                     "rastro_append_batch_size_bucket", "rastro_commit_duration_seconds_count",
                     "rastro_appends_rejected_total", "rastro_query_duration_seconds_bucket",
                     "rastro_projection_position", "rastro_projection_lag_events",
                     "rastro_projection_lag_seconds", "rastro_projection_events_applied_total",
                     "rastro_projection_events_skipped_total", "rastro_http_requests_total",
                     "rastro_http_requests_in_flight", "rastro_read_models_size_bytes",
                     "rastro_read_model_rows", "rastro_projection_events_read_total"):
            self.assertIn("\n" + name, "\n" + text, "missing %s" % name)

    def test_counters_move_by_exactly_what_happened(self):
        before = parse(self.scrape())
        head = 0
        for i in range(5):
            head = self.post_ok("imp", {"id": "mi-%d" % i, K_CAMPANA: "m-x"})["position"]
        for i in range(3):
            head = self.post_ok("conv", {"id": "mc-%d" % i, K_CAMPANA: "m-x", "valor": 1})["position"]
        self.post_ok("imp", {"id": "mi-0", K_CAMPANA: "m-x"})                   # duplicate
        status, _, _, _ = self.server.post("imp", {"id": "mi-0", K_CAMPANA: "other"})
        self.assertEqual(status, 409)                                           # conflict
        for body in ({}, {K_CAMPANA: "m-x", "ip_address": "nope"}):
            status, _, _, _ = self.server.post("imp", body)
            self.assertEqual(status, 400)                                       # invalid x2
        self.query("/tracking/queries/impresiones/mi-1", min_position=head)
        after = parse(self.scrape())

        def delta(key):
            return after.get(key, 0) - before.get(key, 0)

        self.assertEqual(delta('rastro_events_stored_total{type="ImpresionRegistrada"}'), 5)
        self.assertEqual(delta('rastro_events_stored_total{type="ConversionRegistrada"}'), 3)
        self.assertEqual(delta('rastro_appends_rejected_total{reason="duplicate"}'), 1)
        self.assertEqual(delta('rastro_appends_rejected_total{reason="conflict"}'), 1)
        self.assertEqual(delta('rastro_appends_rejected_total{reason="invalid"}'), 2)
        self.assertEqual(delta("rastro_store_position"), 8)
        self.assertEqual(delta('rastro_projection_events_applied_total{projection="impresiones"}'),
                         8)
        self.assertEqual(after["rastro_projection_lag_events"], 0)
        # each event taken once: handed over by the committer as it was made
        # durable (the projector waits out a 50 ms window, the hand-over
        # takes microseconds), or read back from the store
        mem = delta('rastro_projection_events_read_total{source="memory"}')
        store = delta('rastro_projection_events_read_total{source="store"}')
        self.assertEqual(mem + store, 8, (mem, store))
        self.assertGreaterEqual(mem, 1, "no event came from the committer's hand-over")
        self.assertEqual(delta('rastro_http_requests_total{route="POST /tracking/impresiones",'
                               'code="202"}'), 6)
        self.assertEqual(delta('rastro_http_requests_total{route="POST /tracking/impresiones",'
                               'code="400"}'), 2)
        self.assertEqual(delta('rastro_http_requests_total{route="POST /tracking/conversiones",'
                               'code="202"}'), 3)
        self.assertEqual(delta('rastro_query_duration_seconds_count{query="by_id"}'), 1)
        self.assertEqual(delta('rastro_read_model_rows{read_model="impresiones"}'), 5)
        self.assertEqual(delta('rastro_read_model_rows{read_model="conversiones"}'), 3)
        # 10 appends were attempted (8 new, 2 refused by the store): every one in a batch
        self.assertEqual(delta("rastro_append_batch_size_sum"), 10)
        self.assertGreaterEqual(after["rastro_store_size_bytes"], 1)


class ProbesTest(unittest.TestCase):
    """/health/live, /health/ready (with a lag bound) and /tracking/queries/estado."""

    def setUp(self):
        self.srv = Server(extra_args=["--ready-max-lag", "0"]).start()

    def tearDown(self):
        if self.srv.running():
            self.srv.stop()
        self.srv.cleanup()

    def get(self, path):
        status, headers, js, raw = http_request(self.srv.port, "GET", path)
        self.assertIsInstance(js, dict, raw[:200])
        return status, headers, js

    def test_live_ready_and_estado(self):
        status, _, js = self.get("/health/live")
        self.assertEqual((status, js["status"]), (200, "ok"))
        status, _, js = self.get("/health/ready")
        self.assertEqual((status, js["status"]), (200, "ready"))

        # projections held back (another process write-locks the read models):
        # one event behind is not ready with --ready-max-lag 0
        lock = sqlite3.connect(os.path.join(self.srv.data_dir, "readmodels.db"), timeout=5,
                               isolation_level=None)
        try:
            lock.execute("BEGIN IMMEDIATE")
            status, _, js, _ = self.srv.post("imp", {"id": "p-1", K_CAMPANA: "p"})
            self.assertEqual(status, 202)
            status, headers, js = self.get("/health/ready")
            self.assertEqual(status, 503, js)
            self.assertEqual(js["lag_events"], 1)
            self.assertIn("retry-after", headers)
            status, _, js = self.get("/health/live")
            self.assertEqual(status, 200, "live does not depend on the projections")
            status, _, js = self.get("/tracking/queries/estado")
            self.assertEqual(status, 200)
            self.assertEqual(js["store_position"], 1)
            names = sorted(p["name"] for p in js["projections"])
            self.assertEqual(names, ["conversiones", "estadisticas_campana",
                                     "estadisticas_influencer", "impresiones"])
            self.assertTrue(all(p["lag_events"] == 1 for p in js["projections"]), js)
            self.assertGreater(js["store_size_bytes"], 0)
            self.assertEqual(js["version"], js["version"].strip())
            status, _, _, raw = http_request(self.srv.port, "GET", "/metrics")
            m = parse(raw.decode())
            self.assertEqual(m["rastro_projection_lag_events"], 1)
            self.assertGreater(m["rastro_projection_lag_seconds"], 0)
            time.sleep(0.5)     # the projector's write attempts (100 ms each) fail meanwhile
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status, _, js = self.get("/health/ready")
            if status == 200:
                break
            time.sleep(0.05)
        self.assertEqual(status, 200, "ready again once the projections caught up")
        status, _, js = self.get("/tracking/queries/estado")
        self.assertTrue(all(p["lag_events"] == 0 and p["position"] == 1
                            for p in js["projections"]), js)
        status, _, _, raw = http_request(self.srv.port, "GET", "/metrics")
        m = parse(raw.decode())
        self.assertEqual(m["rastro_projection_lag_events"], 0)
        self.assertEqual(m["rastro_projection_lag_seconds"], 0)
        self.assertGreaterEqual(m['rastro_projection_errors_total{reason="io"}'], 1,
                                "the blocked batches were counted as errors")


class VerifyTest(unittest.TestCase):
    """`rastro verify` recomputes the read models from the log and finds a
    row tampered with directly in the read-model file."""

    def test_verify_finds_tampering(self):
        from harness import rastro
        srv = Server().start()
        try:
            head = 0
            for i in range(30):
                kind = "imp" if i % 3 else "conv"
                body = {"id": "v-%d" % i, K_CAMPANA: "v-c%d" % (i % 4),
                        "influencer_id": "v-i%d" % (i % 2)}
                if kind == "conv":
                    body.update(valor="%d.5" % i, moneda="EUR")
                status, _, js, raw = srv.post(kind, body)
                self.assertEqual(status, 202, raw)
                head = js["position"]
            status, _, _, _ = srv.request("GET", "/tracking/queries/impresiones/v-1?min_position=%d"
                                          % head)
            self.assertEqual(status, 200)
            # consistent, with the server still running
            p = rastro("verify", "--data", srv.data_dir)
            self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            self.assertIn("consistent: 0 differences", p.stdout)
            self.assertIn("verifying read models at position %d" % head, p.stdout)
            self.assertEqual(srv.stop(), 0)

            db = sqlite3.connect(os.path.join(srv.data_dir, "readmodels.db"))
            db.execute("UPDATE stats SET impresiones = impresiones + 1"
                       " WHERE scope = 0 AND key = 'v-c1'")
            db.execute("UPDATE impresiones SET user_agent = 'forged' WHERE id = 'v-2'")
            db.execute("DELETE FROM conversiones WHERE id = 'v-3'")
            db.commit()
            db.close()
            p = rastro("verify", "--data", srv.data_dir)
            self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
            out = p.stdout
            self.assertIn("INCONSISTENT: 3 differences", out)
            self.assertRegex(out, r"stats 0/v-c1: differs")
            self.assertRegex(out, r"impresiones \d+: differs \(stored [^)]*forged")
            self.assertRegex(out, r"conversiones \d+: missing row")
            leftovers = [f for f in os.listdir(srv.data_dir) if "verify" in f]
            self.assertEqual(leftovers, [], "verify must clean up its scratch files")
        finally:
            if srv.running():
                srv.kill()
            srv.cleanup()


class SelfCheckTest(unittest.TestCase):
    """The periodic self-check (--verify-every) reports through /metrics:
    0 differences, then the tampered row once someone edits the file."""

    def wait_metric(self, srv, name, pred, what):
        deadline, m = time.monotonic() + 30, {}
        while time.monotonic() < deadline:
            status, _, _, raw = http_request(srv.port, "GET", "/metrics")
            m = parse(raw.decode())
            if name in m and pred(m):
                return m
            time.sleep(0.1)
        self.fail("%s: %r" % (what, {k: v for k, v in m.items() if k.startswith("rastro_verify")}))

    def test_periodic_self_check_metric(self):
        srv = Server(extra_args=["--verify-every", "1"]).start()
        try:
            for i in range(5):
                if i == 4:
                    # a batch more than a second after the first folds the
                    # pending statistics into the stats table
                    time.sleep(1.2)
                status, _, js, _ = srv.post("imp", {"id": "sc-%d" % i, K_CAMPANA: "sc-%d" % (i % 2)})
                self.assertEqual(status, 202)
            # projected, and folded (the batch thread folds right after)
            status, _, _, _ = srv.request(
                "GET", "/tracking/queries/impresiones/sc-4?min_position=%d" % js["position"])
            self.assertEqual(status, 200)
            path = os.path.join(srv.data_dir, "readmodels.db")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                db = sqlite3.connect(path, timeout=10)
                n = db.execute("SELECT count(*) FROM stats WHERE key = 'sc-1'").fetchone()[0]
                db.close()
                if n == 1:
                    break
                time.sleep(0.05)
            self.wait_metric(srv, "rastro_verify_runs_total",
                             lambda m: m["rastro_verify_runs_total"] >= 1 and
                             m["rastro_verify_last_run_timestamp_seconds"] > 0,
                             "a first self-check")
            m = self.wait_metric(srv, "rastro_verify_differences",
                                 lambda m: m["rastro_verify_differences"] == 0, "consistent")
            self.assertEqual(m["rastro_verify_failures_total"], 0)
            db = sqlite3.connect(os.path.join(srv.data_dir, "readmodels.db"), timeout=10)
            cur = db.execute("UPDATE stats SET impresiones = impresiones + 3 WHERE key = 'sc-1'")
            self.assertEqual(cur.rowcount, 1, "the statistics row is on disk")
            db.commit()
            db.close()
            self.wait_metric(srv, "rastro_verify_differences",
                             lambda m: m["rastro_verify_differences"] == 1, "the tampered row")
            self.assertEqual(srv.stop(), 0)
            self.assertIn('msg="self-check: read models differ from the log"', srv.read_log())
        finally:
            if srv.running():
                srv.kill()
            srv.cleanup()


class LogsTest(unittest.TestCase):
    """logfmt lines on stderr; a request is logged (with the ids the client
    sent) only at debug level; X-Request-Id is echoed."""

    def run_one(self, level):
        srv = Server(extra_args=["--log-level", level]).start()
        try:
            status, headers, _, _ = http_request(
                srv.port, "POST", "/tracking/impresiones", body={K_CAMPANA: "log-c"},
                headers={"X-Request-Id": "req-%s" % level, "X-Correlation-Id": "corr-9"})
            self.assertEqual(status, 202)
            self.assertEqual(headers.get("x-request-id"), "req-%s" % level)
            self.assertEqual(srv.stop(), 0)
            return srv.read_log()
        finally:
            if srv.running():
                srv.kill()
            srv.cleanup()

    def test_request_lines_only_at_debug(self):
        debug = self.run_one("debug")
        self.assertRegex(debug, r'level=debug msg="request" route="POST /tracking/impresiones"'
                                r' status=202 request_id=req-debug correlation_id=corr-9')
        info = self.run_one("info")
        self.assertNotIn('msg="request"', info)
        self.assertRegex(info, r'ts=\S+ level=info msg="listening" addr=')
        for line in info.splitlines():
            if line and not line.startswith("$ "):
                self.assertRegex(line, r'^ts=\S+ level=(debug|info|warn|error) msg="', line)


class PrometheusScrapeTest(unittest.TestCase):
    """A real Prometheus server (Debian's), started here on loopback with a
    scrape config of its own, scrapes a running rastro; a query through
    Prometheus's HTTP API returns the right count of stored events."""

    def test_prometheus_scrapes_rastro(self):
        import json
        import tempfile
        import urllib.parse
        from harness import free_port
        prom = shutil.which("prometheus") or "/usr/bin/prometheus"
        self.assertTrue(os.path.exists(prom), "prometheus missing (Debian package prometheus)")
        srv = Server().start()
        work = tempfile.mkdtemp(prefix="rastro-prom-")
        proc = None
        log = None
        try:
            for i in range(7):
                status, _, _, _ = srv.post("imp", {"id": "pr-%d" % i, K_CAMPANA: "pr"})
                self.assertEqual(status, 202)
            port = free_port()
            cfg = os.path.join(work, "prometheus.yml")
            with open(cfg, "w") as f:
                f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                        "scrape_configs:\n  - job_name: rastro\n    static_configs:\n"
                        "      - targets: ['127.0.0.1:%d']\n" % srv.port)
            log = open(os.path.join(work, "prometheus.log"), "wb")
            proc = subprocess.Popen(
                [prom, "--config.file=" + cfg, "--storage.tsdb.path=" + os.path.join(work, "data"),
                 "--web.listen-address=127.0.0.1:%d" % port, "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            query = 'rastro_events_stored_total{type="ImpresionRegistrada"}'
            url = "/api/v1/query?query=" + urllib.parse.quote(query)
            value, deadline = None, time.monotonic() + 60
            while time.monotonic() < deadline and value != 7:
                time.sleep(0.5)
                try:
                    status, _, js, _ = http_request(port, "GET", url, timeout=5)
                except OSError:
                    continue
                if status == 200 and js and js.get("data", {}).get("result"):
                    value = int(float(js["data"]["result"][0]["value"][1]))
            self.assertEqual(value, 7, "Prometheus's answer for %s" % query)
            status, _, js, _ = http_request(port, "GET", "/api/v1/targets", timeout=5)
            health = [t["health"] for t in js["data"]["activeTargets"]]
            self.assertEqual(health, ["up"], json.dumps(js)[:500])
        finally:
            if proc is not None:
                proc.terminate()            # our Prometheus, by its PID
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if log is not None:
                log.close()
            if srv.running():
                srv.stop()
            srv.cleanup()
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
