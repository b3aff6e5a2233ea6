"""
The data folder turns read-only under a running server, the way a disk does
when the kernel finds an error: an ext4 image this test makes and
loop-mounts with errors=remount-ro, then /sys/fs/ext4/<dev>/trigger_fs_error
(the kernel's own switch for testing exactly this) while rastro has its
files open. The server says so in its log, answers 503 with Retry-After to
commands, keeps serving queries from what it has, and corrupts nothing:
after fsck and a fresh mount every acknowledged command is there, the log
is gap-free, a restart brings the read models back (they are rebuilt from
the log, so what the crash took from them returns) and `rastro verify`
finds them consistent.

Needs root (mount, losetup); skipped, saying why, without.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import CAMPANAS, K_CAMPANA, KIND_STREAM, Server, events, rastro  # noqa: E402


def run(*cmd, check=True):
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=60)


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("losetup") and shutil.which("mkfs.ext4"),
                     "needs root, losetup and mkfs.ext4 to make a file system go read-only")
class ReadOnlyTest(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="rastro-ro-")
        self.img = os.path.join(self.tmp, "fs.img")
        self.mnt = os.path.join(self.tmp, "mnt")
        os.mkdir(self.mnt)
        with open(self.img, "wb") as f:
            f.truncate(64 * 1024 * 1024)
        run("mkfs.ext4", "-q", "-F", self.img)
        self.dev = run("losetup", "-f", "--show", self.img).stdout.strip()
        run("mount", "-o", "errors=remount-ro", self.dev, self.mnt)
        self.srv = None

    def tearDown(self):
        if self.srv is not None:
            self.srv.kill()
            self.srv.cleanup()
        run("umount", self.mnt, check=False)
        run("losetup", "-d", self.dev, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_read_only_under_a_running_server(self):
        data = os.path.join(self.mnt, "data")
        os.mkdir(data)
        self.srv = srv = Server(data_dir=data).start()
        acked = []
        for i in range(30):
            status, _, js, raw = srv.post("imp", {"id": "ro-%d" % i, K_CAMPANA: "c-ro"})
            self.assertEqual(status, 202, raw)
            acked.append(("ro-%d" % i, js["position"]))
        status, _, js, _ = srv.request(
            "GET", "/tracking/queries/%s/c-ro/estadisticas?min_position=30" % CAMPANAS)
        self.assertEqual(js["total_impresiones"], 30)

        trigger = "/sys/fs/ext4/%s/trigger_fs_error" % os.path.basename(self.dev)
        with open(trigger, "w") as f:
            f.write("rastro test: make it read-only\n")
        self.assertIn("emergency_ro" if "emergency_ro" in run("mount").stdout else "ro,",
                      [l for l in run("mount").stdout.splitlines() if self.mnt in l][0])

        deadline, refused = time.monotonic() + 10, None
        n = 0
        while refused is None and time.monotonic() < deadline:
            status, hdrs, _, raw = srv.post("imp", {"id": "after-%d" % n, K_CAMPANA: "c-ro"})
            n += 1
            if status == 503:
                refused = hdrs
            elif status == 202:
                self.fail("a 202 on a read-only file system: %r" % raw)
            else:
                self.fail("unexpected %d %r" % (status, raw))
        self.assertIsNotNone(refused, "commands were not refused")
        self.assertIn("retry-after", refused)
        time.sleep(0.3)
        self.assertIn("read-only file system", srv.read_log().lower())
        # queries go on from what is there
        status, _, js, _ = srv.request("GET", "/tracking/queries/%s/c-ro/estadisticas" % CAMPANAS)
        self.assertEqual(status, 200)
        self.assertEqual(js["total_impresiones"], 30)
        status, _, js, _ = srv.request("GET", "/tracking/queries/impresiones/ro-7")
        self.assertEqual(status, 200)
        self.assertEqual(js["position"], dict(acked)["ro-7"])
        status, _, _, _ = srv.request("GET", "/health/live")
        self.assertEqual(status, 200)
        rc = srv.stop(check=False)  # it may not checkpoint; it must not hang
        self.assertNotIn("Sanitizer", srv.read_log())
        print("stop on a read-only disk: exit %d" % rc, file=sys.stderr)

        # corrupts nothing: repair the file system's error state, mount again
        run("umount", self.mnt)
        run("e2fsck", "-f", "-y", self.img, check=False)
        run("mount", self.dev, self.mnt)
        evs = events(data)
        self.assertEqual([e["position"] for e in evs], list(range(1, len(evs) + 1)))
        by_stream = {e["stream_id"]: e["position"] for e in evs}
        for id_, pos in acked:
            self.assertEqual(by_stream.get(KIND_STREAM["imp"] + id_), pos, id_)
        self.assertEqual(len(evs), 30, "an event appeared that was never acknowledged")
        # the read models are written without an fsync per batch (they are
        # rebuilt from the log): whatever the crash left, a start catches up
        srv.start()
        status, _, js, _ = srv.request(
            "GET", "/tracking/queries/%s/c-ro/estadisticas?min_position=30" % CAMPANAS)
        self.assertEqual(status, 200)
        self.assertEqual(js["total_impresiones"], 30)
        self.assertEqual(srv.stop(), 0)
        p = rastro("verify", "--data", data)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
