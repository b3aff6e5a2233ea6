"""
End-to-end tests of API keys: with --api-key-file every route but the
health probes needs "Authorization: Bearer KEY" with the right scope (401
without a known key, 403 with the wrong scope); a non-loopback address
without keys is refused unless --insecure; a malformed key file is refused.
"""

import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import CAMPANAS, K_CAMPANA, Server, http_request, rastro  # noqa: E402

INGEST = "ingest-key-0123456789abcdef"
READ = "read-key-0123456789abcdef"
ADMIN = "admin-key-0123456789abcdef"


class AuthTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        fd, cls.keyfile = tempfile.mkstemp(prefix="rastro-keys-")
        with os.fdopen(fd, "w") as f:
            f.write("# test keys\n%s ingest\n%s read\n\n%s admin,read,ingest  # all\n"
                    % (INGEST, READ, ADMIN))
        cls.srv = Server(extra_args=["--api-key-file", cls.keyfile]).start()

    @classmethod
    def tearDownClass(cls):
        rc = cls.srv.stop()
        cls.srv.cleanup()
        os.unlink(cls.keyfile)
        assert rc == 0

    def req(self, method, path, key=None, body=None):
        headers = {"Authorization": "Bearer " + key} if key else {}
        return http_request(self.srv.port, method, path, body=body, headers=headers)

    def test_scopes(self):
        post = ("POST", "/tracking/impresiones", {"id": "a-1", K_CAMPANA: "a-c"})
        stats = ("GET", "/tracking/queries/%s/a-c/estadisticas" % CAMPANAS, None)
        metrics = ("GET", "/metrics", None)
        cases = [
            (post, None, 401), (post, "wrong-key-0123456789abcdef", 401), (post, READ, 403),
            (post, INGEST, 202), (post, ADMIN, 202),
            (stats, None, 401), (stats, INGEST, 403), (stats, READ, 200), (stats, ADMIN, 200),
            (metrics, READ, 403), (metrics, ADMIN, 200), (metrics, None, 401),
            (("GET", "/tracking/health", None), None, 200),
            (("GET", "/health/live", None), None, 200),
            (("GET", "/health/ready", None), None, 200),
            (("GET", "/tracking/queries/health", None), None, 200),
            (("GET", "/nope", None), None, 404),
        ]
        for (method, path, body), key, want in cases:
            with self.subTest(path=path, key=key):
                status, headers, js, raw = self.req(method, path, key, body)
                self.assertEqual(status, want, raw[:200])
                if want == 401:
                    self.assertIn("bearer", headers.get("www-authenticate", "").lower())
                    self.assertIn("error", js)
                else:
                    # request contexts are reused (server.c): nothing of a 401
                    # before this one may stick to its answer
                    self.assertNotIn("www-authenticate", headers)
        status, _, _, _ = self.req("POST", "/tracking/impresiones", INGEST[:-1],
                                   {K_CAMPANA: "a-c"})
        self.assertEqual(status, 401, "a key one character short is not a key")
        status, _, _, _ = http_request(self.srv.port, "POST", "/tracking/impresiones",
                                       body={K_CAMPANA: "a-c"},
                                       headers={"Authorization": "Basic " + INGEST})
        self.assertEqual(status, 401)


class StartupTest(unittest.TestCase):

    def test_non_loopback_without_keys_is_refused(self):
        data = tempfile.mkdtemp(prefix="rastro-auth-")
        p = rastro("serve", "--listen", "0.0.0.0:1", "--data", data, timeout=30)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("refusing to serve on 0.0.0.0:1 with no API keys", p.stderr)
        self.assertIn("--insecure", p.stderr)

    def test_malformed_key_file_is_refused(self):
        fd, path = tempfile.mkstemp(prefix="rastro-keys-")
        with os.fdopen(fd, "w") as f:
            f.write("short read\n")
        try:
            p = rastro("serve", "--listen", "127.0.0.1:1", "--api-key-file", path, "--data",
                       tempfile.mkdtemp(prefix="rastro-auth-"), timeout=30)
            self.assertNotEqual(p.returncode, 0)
            self.assertIn("line 1", p.stderr)
        finally:
            os.unlink(path)


if __name__ == "__main__":
    unittest.main()
