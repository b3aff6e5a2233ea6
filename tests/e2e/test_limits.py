"""
End-to-end tests of the HTTP limits: thousands of idle connections do not
keep others out, idle connections are closed after --idle-timeout, an
oversized URL or header block and malformed requests get a 4xx (never a
crash or a hang), and the server still answers afterwards; --max-header-kib
sets where a header block becomes too big (431); 128 or 256
clients sending at the same moment are all answered at once (libmicrohttpd's
own loop stalled them until the idle timeout).
"""

import os
import resource
import select
import socket
import sys
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import K_CAMPANA, Server, events, http_request, post_bytes, rastro  # noqa: E402

IDLE = 3000


def raw(port, data, timeout=10):
    """Sends raw bytes, returns what comes back until the server closes or times out."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        chunks = []
        while True:
            try:
                c = s.recv(65536)
            except socket.timeout:
                break
            if not c:
                break
            chunks.append(c)
            if b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)
    finally:
        s.close()


class LimitsTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(hard, IDLE + 256) if hard != resource.RLIM_INFINITY else IDLE + 256
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        cls.srv = Server(extra_args=["--idle-timeout", "2", "--max-connections", "20000"]).start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.srv.stop()
        cls.srv.cleanup()
        assert rc == 0

    def test_thousands_of_idle_connections(self):
        socks = []
        try:
            for _ in range(IDLE):
                socks.append(socket.create_connection(("127.0.0.1", self.srv.port), timeout=10))
            t0 = time.monotonic()
            status, _, js, _ = http_request(self.srv.port, "POST", "/tracking/impresiones",
                                            body={K_CAMPANA: "lim"})
            self.assertEqual(status, 202)
            status, _, _, _ = http_request(self.srv.port, "GET", "/tracking/health")
            self.assertEqual(status, 200)
            self.assertLess(time.monotonic() - t0, 5, "answers with %d idle connections" % IDLE)
            # --idle-timeout 2: the idle ones are closed by the server
            time.sleep(4)
            closed = 0
            for s in socks[:50]:
                s.settimeout(2)
                try:
                    closed += s.recv(1) == b""
                except (ConnectionResetError, socket.timeout):
                    closed += 1
            self.assertEqual(closed, 50, "idle connections must be closed after the timeout")
        finally:
            for s in socks:
                s.close()

    def test_oversized_url_and_headers(self):
        long_url = b"GET /tracking/queries/impresiones/" + b"a" * 40000 + b" HTTP/1.1\r\n" \
                   b"Host: x\r\n\r\n"
        reply = raw(self.srv.port, long_url)
        self.assertRegex(reply[:12], rb"^HTTP/1\.1 4\d\d", reply[:200])
        big_headers = b"GET /tracking/health HTTP/1.1\r\nHost: x\r\n" + \
                      b"".join(b"X-Pad-%d: %s\r\n" % (i, b"b" * 1000) for i in range(60)) + b"\r\n"
        reply = raw(self.srv.port, big_headers)
        self.assertRegex(reply[:12], rb"^HTTP/1\.1 4\d\d", reply[:200])
        status, _, _, _ = http_request(self.srv.port, "GET", "/tracking/health")
        self.assertEqual(status, 200)

    def test_header_limit(self):
        """16 KiB of request line and headers by default, --max-header-kib
        sets it; past the limit the answer is 431, and a bad value is
        refused at start naming the option."""
        def with_pad(n):
            return b"GET /tracking/health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * n + b"\r\n\r\n"
        self.assertRegex(raw(self.srv.port, with_pad(12 * 1024))[:12], rb"^HTTP/1\.1 200")
        self.assertRegex(raw(self.srv.port, with_pad(20 * 1024))[:12], rb"^HTTP/1\.1 431")
        small = Server(extra_args=["--max-header-kib", "8"]).start()
        try:
            self.assertRegex(raw(small.port, with_pad(6 * 1024))[:12], rb"^HTTP/1\.1 200")
            self.assertRegex(raw(small.port, with_pad(12 * 1024))[:12], rb"^HTTP/1\.1 431")
        finally:
            self.assertEqual(small.stop(), 0)
            small.cleanup()
        for bad in ("2", "2048", "8k"):
            with self.subTest(bad=bad):
                cp = rastro("serve", "--max-header-kib", bad)
                self.assertEqual(cp.returncode, 2, cp.stderr)
                self.assertIn("--max-header-kib wants an integer from 4 to 1024", cp.stderr)

    def test_malformed_requests(self):
        for junk in (b"\x00\x01\x02 garbage\r\n\r\n",
                     b"GET\r\n\r\n",
                     b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
                     b"POST /tracking/impresiones HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: -5\r\n\r\n",
                     b"POST /tracking/impresiones HTTP/1.1\r\nHost: x\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"):
            with self.subTest(junk=junk[:40]):
                reply = raw(self.srv.port, junk, timeout=5)
                if reply:
                    self.assertRegex(reply[:12], rb"^HTTP/1\.[01] [45]\d\d", reply[:200])
                status, _, _, _ = http_request(self.srv.port, "GET", "/tracking/health")
                self.assertEqual(status, 200, "the server must still answer")


def read_answers(socks, deadline):
    """Reads one HTTP answer from each socket; returns {sock: status line}
    for those answered before the deadline."""
    got, done = {s: b"" for s in socks}, {}
    while len(done) < len(socks) and time.monotonic() < deadline:
        waiting = [s for s in socks if s not in done]
        ready, _, _ = select.select(waiting, [], [], 0.2)
        for s in ready:
            chunk = s.recv(65536)
            if not chunk:
                done[s] = b"closed"
                continue
            got[s] += chunk
            head, sep, body = got[s].partition(b"\r\n\r\n")
            if not sep:
                continue
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(body) >= length:
                done[s] = head.split(b"\r\n", 1)[0]
    return done


class BurstTest(unittest.TestCase):
    """Clients that all send at once, on one HTTP thread. libmicrohttpd
    0.9.75's own loop called epoll_wait again, with its whole timeout, after
    a call that returned exactly 128 events: with 128 (or 256) requests
    arriving together nothing was answered for up to the idle timeout."""

    ROUNDS = 15
    WITHIN = 10.0       # seconds for a round's answers; the stall was 60

    @classmethod
    def setUpClass(cls):
        cls.srv = Server(extra_args=["--threads", "1"]).start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.srv.stop()
        try:
            found = events(cls.srv.data_dir, "--type", "ImpresionRegistrada")
        finally:
            cls.srv.cleanup()
        assert rc == 0
        # every round's every request was stored once
        assert len(found) == cls.ROUNDS * (128 + 256), len(found)

    def burst(self, clients):
        socks = [socket.create_connection(("127.0.0.1", self.srv.port), timeout=10)
                 for _ in range(clients)]
        try:
            for rnd in range(self.ROUNDS):
                for s in socks:
                    s.sendall(post_bytes({K_CAMPANA: "burst", "influencer_id": "b",
                                          "id": str(uuid.uuid4())}))
                t0 = time.monotonic()
                done = read_answers(socks, t0 + self.WITHIN)
                self.assertEqual(len(done), clients,
                                 "round %d: %d of %d answered within %.0f s"
                                 % (rnd, len(done), clients, self.WITHIN))
                bad = [v for v in done.values() if not v.startswith(b"HTTP/1.1 202")]
                self.assertEqual(bad, [], "round %d" % rnd)
        finally:
            for s in socks:
                s.close()

    def test_128_at_once(self):
        self.burst(128)

    def test_256_at_once(self):
        self.burst(256)


if __name__ == "__main__":
    unittest.main()
