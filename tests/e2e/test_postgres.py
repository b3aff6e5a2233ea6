"""
The real binary on the PostgreSQL event store (--store postgres://...), on
the throwaway cluster ctest starts (tools/testpg.sh; RASTRO_TEST_PG_DIR):
the schema must be migrated first and a newer one is refused; commands and
queries work as on SQLite; two servers with their own data folders append
to one store and both project every event; connections killed under load
cost 503s with Retry-After (never a 500, never a hang) and nothing that got
a 202 is lost or doubled.
"""

import os
import signal
import subprocess
import sys
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (CAMPANAS, K_CAMPANA, KIND_STREAM, PostLoad, Server, enc,  # noqa: E402
                     events, rastro)
from infra import PG_DIR, migrated, new_database, psql  # noqa: E402

def impression(camp, id_=None):
    return {"id": id_ or str(uuid.uuid4()), K_CAMPANA: camp, "influencer_id": "inf-pg",
            "usuario_id": "u1"}


@unittest.skipUnless(PG_DIR, "no PostgreSQL test cluster (RASTRO_TEST_PG_DIR unset)")
class PostgresStoreTest(unittest.TestCase):

    def test_schema_must_be_migrated_and_known(self):
        url = new_database("schema")
        srv = Server(extra_args=["--store", url])
        try:
            cp = rastro("serve", "--listen", "127.0.0.1:0", "--data", srv.data_dir,
                        "--store", url, timeout=30)
            self.assertEqual(cp.returncode, 1)
            self.assertIn("rastro migrate", cp.stdout + cp.stderr)
            cp = rastro("migrate", "--store", url)
            self.assertEqual(cp.returncode, 0, cp.stderr)
            self.assertIn("from version 0 to 1", cp.stdout)
            cp = rastro("migrate", "--store", url)
            self.assertEqual(cp.returncode, 0, cp.stderr)
            self.assertIn("nothing to do", cp.stdout)
            # a schema from a newer rastro: refused, saying why
            psql(url, "INSERT INTO rastro_schema(version) VALUES (2)")
            cp = rastro("serve", "--listen", "127.0.0.1:0", "--data", srv.data_dir,
                        "--store", url, timeout=30)
            self.assertEqual(cp.returncode, 1)
            self.assertIn("schema version 2", cp.stdout + cp.stderr)
            cp = rastro("migrate", "--store", url)
            self.assertEqual(cp.returncode, 1)
            # no password in the log: the URL is never printed
            self.assertNotIn("postgres://", cp.stdout + cp.stderr)
        finally:
            srv.cleanup()

    def test_commands_queries_and_the_log(self):
        url = migrated("basic")
        srv = Server(extra_args=["--store", url]).start()
        try:
            ids = [str(uuid.uuid4()) for _ in range(20)]
            positions = []
            for id_ in ids:
                status, _, js, raw = srv.post("imp", impression("pg-camp", id_))
                self.assertEqual(status, 202, raw)
                positions.append(js["position"])
            self.assertEqual(positions, list(range(1, 21)))
            status, _, _, raw = srv.post("conv", dict(impression("pg-camp"), valor="12.50",
                                                     moneda="EUR", tipo_conversion="VENTA"))
            self.assertEqual(status, 202, raw)
            # the same id again: idempotent, no second event
            status, _, _, raw = srv.post("imp", impression("pg-camp", ids[0]))
            self.assertIn(status, (200, 202), raw)
            status, _, js, raw = srv.request(
                "GET", "/tracking/queries/%s/%s/estadisticas?min_position=21"
                % (CAMPANAS, enc("pg-camp")))
            self.assertEqual(status, 200, raw)
            self.assertEqual(js["total_impresiones"], 20)
            self.assertEqual(js["total_conversiones"], 1)
            rows = psql(url, "SELECT count(*), max(position) FROM events")
            self.assertEqual(rows, [["21", "21"]])
            evs = events(srv.data_dir, "--store", url)
            self.assertEqual([e["position"] for e in evs], list(range(1, 22)))
            self.assertEqual(evs[0]["stream_id"], KIND_STREAM["imp"] + ids[0])
            # append-only for someone with psql, too
            cp = subprocess.run(["psql", "-X", "-d", url, "-c", "DELETE FROM events"],
                                capture_output=True, text=True, timeout=30)
            self.assertIn("append-only", cp.stderr)
            # restart: the read models pick up where they were
            srv.stop()
            srv.start()
            status, _, js, _ = srv.request(
                "GET", "/tracking/queries/%s/%s/estadisticas" % (CAMPANAS, enc("pg-camp")))
            self.assertEqual(js["total_impresiones"], 20)
            srv.stop()
        finally:
            srv.kill()
            srv.cleanup()

    def test_two_servers_one_store(self):
        """Two processes, each its own data folder and read models, append to
        one PostgreSQL store: positions stay gap-free and both project all."""
        url = migrated("two")
        a = Server(extra_args=["--store", url]).start()
        b = Server(extra_args=["--store", url]).start()
        try:
            errors = []

            def load(srv, tag):
                for i in range(150):
                    status, _, _, raw = srv.post("imp", impression("pg-two", "%s-%d" % (tag, i)))
                    if status != 202:
                        errors.append((tag, i, status, raw))

            threads = [threading.Thread(target=load, args=(s, "%s%d" % (n, k)))
                       for s, n in ((a, "a"), (b, "b")) for k in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.assertEqual(errors, [])
            self.assertEqual(psql(url, "SELECT count(*), max(position) FROM events"),
                             [["900", "900"]])
            for srv in (a, b):
                status, _, js, raw = srv.request(
                    "GET", "/tracking/queries/%s/%s/estadisticas?min_position=900&wait_ms=10000"
                    % (CAMPANAS, enc("pg-two")))
                self.assertEqual(status, 200, raw)
                self.assertEqual(js["total_impresiones"], 900)
            a.stop()
            b.stop()
        finally:
            for s in (a, b):
                s.kill()
                s.cleanup()

    def test_connections_killed_under_load(self):
        url = migrated("kill")
        srv = Server(extra_args=["--store", url]).start()
        load = PostLoad(srv, "k", campaign="pg-kill", answer_within=5)
        try:
            load.start()
            killed = 0
            for _ in range(8):
                time.sleep(0.3)
                rows = psql(url, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                 " WHERE application_name = 'rastro' AND datname = current_database()")
                killed += int(rows[0][0])
            time.sleep(1.0)     # the last kill's backoff passes; 202s again
            load.stop()
            self.assertEqual(load.bad, [])
            codes = load.answers
            self.assertGreater(killed, 0)
            self.assertIn(503, codes, "no request was in flight at a kill? %r" % codes)
            # recovered by itself
            status, _, _, raw = srv.post("imp", impression("pg-kill", "after"))
            self.assertEqual(status, 202, raw)
            acked = {a[len(KIND_STREAM["imp"]):] for a in load.acked} | {"after"}
            stored = psql(url, "SELECT substr(stream_id, %d), count(*) FROM events GROUP BY 1"
                          % (len(KIND_STREAM["imp"]) + 1))
            counts = {sid: int(n) for sid, n in stored}
            self.assertEqual(sorted(k for k, n in counts.items() if n != 1), [])
            self.assertEqual(acked - set(counts), set())
            self.assertEqual(psql(url, "SELECT max(position) - count(*) FROM events"), [["0"]])
            print("kill: %d backends killed, answers %r, %d stored"
                  % (killed, codes, len(counts)), file=sys.stderr)
            srv.stop()
        finally:
            load.stop()
            srv.kill()
            srv.cleanup()

    def test_a_frozen_database_costs_a_503_not_a_hang(self):
        """The server's backend stops answering (SIGSTOP to that one process
        of the test cluster): the request in flight gets 503 within the
        append timeout (5 s) and the next one goes through a new connection."""
        url = migrated("frozen")
        srv = Server(extra_args=["--store", url]).start()
        pid = None
        try:
            status, _, _, raw = srv.post("imp", impression("pg-frozen", "before"))
            self.assertEqual(status, 202, raw)
            rows = psql(url, "SELECT pid FROM pg_stat_activity WHERE application_name = 'rastro'"
                             " AND datname = current_database()")
            pids = [int(r[0]) for r in rows]
            self.assertGreaterEqual(len(pids), 1)
            # the committer's connection is the one that appended: freeze them all
            # (the projector's reader only reads; it reconnects the same way)
            for p in pids:
                os.kill(p, signal.SIGSTOP)
            pid = pids
            t0 = time.monotonic()
            status, hdrs, _, raw = srv.post("imp", impression("pg-frozen", "during"))
            took = time.monotonic() - t0
            self.assertEqual(status, 503, raw)
            self.assertIn("retry-after", hdrs)
            self.assertLess(took, 8.0)
            self.assertGreater(took, 3.0)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                status, _, _, raw = srv.post("imp", impression("pg-frozen", "after"))
                if status == 202:
                    break
                time.sleep(0.2)
            self.assertEqual(status, 202, raw)
        finally:
            for p in pid or []:
                os.kill(p, signal.SIGCONT)
            srv.kill()
            srv.cleanup()
        # nothing half-written: "during" is there or not, once at most
        rows = psql(url, "SELECT substr(stream_id, 11), count(*) FROM events GROUP BY 1 ORDER BY 1")
        self.assertIn(["after", "1"], rows)
        self.assertIn(["before", "1"], rows)
        self.assertEqual(psql(url, "SELECT max(position) - count(*) FROM events"), [["0"]])


if __name__ == "__main__":
    unittest.main(verbosity=2)
