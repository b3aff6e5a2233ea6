"""
A full disk: the data folder is a small tmpfs this test mounts (and
unmounts). When it fills, commands get 503 with Retry-After and the log
says why, queries keep answering, nothing acknowledged is lost, and once
space is back commands succeed again with no restart; afterwards the log is
gap-free and `rastro verify` finds the read models consistent.
"""

import os
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import CAMPANAS, K_CAMPANA, KIND_STREAM, Server, events, rastro  # noqa: E402


@unittest.skipUnless(os.geteuid() == 0, "needs root to mount a small tmpfs")
class DiskFullTest(unittest.TestCase):

    def setUp(self):
        self.mnt = tempfile.mkdtemp(prefix="rastro-tmpfs-")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", self.mnt], check=True)
        self.srv = None

    def tearDown(self):
        if self.srv is not None:
            if self.srv.running():
                self.srv.kill()
            self.srv.cleanup()
        subprocess.run(["umount", self.mnt], check=False)
        os.rmdir(self.mnt)

    def test_full_disk_then_space_again(self):
        data = os.path.join(self.mnt, "data")
        os.mkdir(data)
        self.srv = srv = Server(data_dir=data)
        srv.start()
        # leave about 3 MiB free
        st = os.statvfs(self.mnt)
        filler = os.path.join(self.mnt, "filler")
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - 3 * 1024 * 1024))
        acked, full = [], None
        body = {K_CAMPANA: "df", "user_agent": "u" * 1000, "referrer": "https://r/" + "x" * 1900}
        deadline = time.monotonic() + 120
        n = 0
        while full is None and time.monotonic() < deadline:
            n += 1
            status, headers, js, raw = srv.post("imp", dict(body, id="df-%d" % n))
            if status == 202:
                acked.append(("imp", "df-%d" % n, js["position"]))
            elif status == 503:
                full = headers
            else:
                self.fail("unexpected %d %r" % (status, raw[:200]))
        self.assertIsNotNone(full, "the disk never filled (%d posts)" % n)
        self.assertIn("retry-after", full)
        self.assertGreater(len(acked), 10)
        time.sleep(1.5)     # the store's checkpoints fail meanwhile, 50 times a second
        log = srv.read_log()
        self.assertIn("full", log.lower(), "the log must say the disk is full")
        n_ckpt = log.count("WAL checkpoint failed")
        self.assertLessEqual(n_ckpt, 2, "said once, not each time: " + log[-2000:])
        # queries keep answering from what is there
        status, _, js, _ = srv.request("GET", "/tracking/queries/%s/df/estadisticas" % CAMPANAS)
        self.assertEqual(status, 200)
        status, _, _, _ = srv.request("GET", "/tracking/health")
        self.assertEqual(status, 200)

        os.unlink(filler)                   # space is back
        deadline, ok = time.monotonic() + 30, None
        while ok is None and time.monotonic() < deadline:
            n += 1
            status, _, js, _ = srv.post("imp", {"id": "df-%d" % n, K_CAMPANA: "df"})
            if status == 202:
                ok = js
                acked.append(("imp", "df-%d" % n, js["position"]))
            else:
                time.sleep(0.2)
        self.assertIsNotNone(ok, "commands must succeed again without a restart")
        self.assertEqual(srv.stop(), 0)

        evs = events(data)
        self.assertEqual([e["position"] for e in evs], list(range(1, len(evs) + 1)))
        by_stream = {e["stream_id"]: e["position"] for e in evs}
        for kind, id_, pos in acked:
            self.assertEqual(by_stream.get(KIND_STREAM[kind] + id_), pos, id_)
        srv.start()
        status, _, _, _ = srv.request("GET", "/tracking/queries/impresiones/df-1?min_position=%d"
                                      % len(evs))
        self.assertEqual(status, 200)
        self.assertEqual(srv.stop(), 0)
        p = rastro("verify", "--data", data)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)


if __name__ == "__main__":
    unittest.main()
