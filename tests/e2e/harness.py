"""
harness.py - shared helpers for rastro's end-to-end tests.

The tests are run by ctest as `python3 tests/e2e/test_X.py` with RASTRO_BIN
naming the built binary (an AddressSanitizer build, so it is slow-ish to
start). Everything here talks only to 127.0.0.1 and only ever signals the
processes it started itself, by PID.

Python 3 standard library only.
"""

import atexit
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
from decimal import Decimal

try:
    BIN = os.path.abspath(os.environ["RASTRO_BIN"])
except KeyError:
    sys.stderr.write("RASTRO_BIN is not set: point it at the built rastro binary\n")
    raise SystemExit(2)

HOST = "127.0.0.1"
HTTP_TIMEOUT = 30.0       # seconds, per request
START_TIMEOUT = 30.0      # seconds, until /tracking/health answers 200
STOP_TIMEOUT = 30.0       # seconds, after SIGTERM
CLI_TIMEOUT = 120.0       # seconds, per CLI run

# The word campañas as it travels in a path, and its ASCII spelling.
CAMPANAS = "campa%C3%B1as"
CAMPANAS_ASCII = "campanas"
K_CAMPANA = "campa\u00f1a_id"

UUID7_RE = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.I)
UUID_RE = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
CANON_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def without_recorded_at(record):
    """A by-id answer minus 'recorded_at' (the store's clock, not the client's),
    after checking it is a canonical timestamp."""
    rec = dict(record)
    ts = rec.pop("recorded_at", None)
    assert isinstance(ts, str) and CANON_TS_RE.match(ts), "bad recorded_at %r" % (ts,)
    return rec

# Exact key sets of the query answers.
IMP_RECORD_KEYS = {"id", K_CAMPANA, "influencer_id", "usuario_id", "tipo_evento",
                   "user_agent", "ip_address", "referrer", "timestamp", "recorded_at",
                   "position"}
CONV_RECORD_KEYS = IMP_RECORD_KEYS | {"tipo_conversion", "valor", "moneda"}
CAMP_IMP_ITEM_KEYS = {"id", "influencer_id", "usuario_id", "tipo_evento", "timestamp"}
CAMP_CONV_ITEM_KEYS = CAMP_IMP_ITEM_KEYS | {"tipo_conversion", "valor", "moneda"}
INF_IMP_ITEM_KEYS = {"id", K_CAMPANA, "usuario_id", "tipo_evento", "timestamp"}
INF_CONV_ITEM_KEYS = INF_IMP_ITEM_KEYS | {"tipo_conversion", "valor", "moneda"}
STATS_COMMON_KEYS = {"total_impresiones", "total_conversiones", "valor_total_conversiones",
                     "tasa_conversion", "ultima_actualizacion", "valor_por_moneda"}
CAMP_STATS_KEYS = STATS_COMMON_KEYS | {K_CAMPANA}
INF_STATS_KEYS = STATS_COMMON_KEYS | {"influencer_id"}
EVENT_KEYS = {"position", "event_id", "stream_id", "stream_version", "type",
              "schema_version", "recorded_at", "data", "metadata"}

KIND_PATH = {"imp": "/tracking/impresiones", "conv": "/tracking/conversiones"}
KIND_QUERY = {"imp": "impresiones", "conv": "conversiones"}
KIND_STREAM = {"imp": "impresion:", "conv": "conversion:"}
KIND_TYPE = {"imp": "ImpresionRegistrada", "conv": "ConversionRegistrada"}


def post_bytes(body, kind="imp"):
    """A whole POST of body (a dict, sent as JSON) as bytes, for tests that
    write to sockets themselves."""
    data = json.dumps(body).encode()
    return (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (KIND_PATH[kind].encode(), len(data), data))


def enc(segment):
    """Percent-encodes one path segment (every reserved byte, '/' included)."""
    return urllib.parse.quote(segment, safe="")


def with_params(path, **params):
    """Appends query parameters (None values skipped) to path."""
    items = [(k, str(v)) for k, v in params.items() if v is not None]
    if not items:
        return path
    sep = "&" if "?" in path else "?"
    return path + sep + urllib.parse.urlencode(items)


def json_decimal(raw):
    """Parses raw JSON bytes keeping every non-integer number as an exact Decimal."""
    return json.loads(raw.decode("utf-8"), parse_float=Decimal)


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((HOST, 0))
        return s.getsockname()[1]
    finally:
        s.close()


def http_request(port, method, path, body=None, headers=None, raw_body=None,
                 timeout=HTTP_TIMEOUT):
    """
    One HTTP request on a fresh connection to 127.0.0.1:port.

    body is JSON-encoded (UTF-8, non-ASCII kept as is); raw_body (bytes or
    str) is sent as given. path is sent as is (the caller percent-encodes).
    Returns (status, headers with lower-case keys, parsed JSON or None, raw
    bytes).
    """
    hdrs = {}
    data = None
    if raw_body is not None:
        data = raw_body.encode("utf-8") if isinstance(raw_body, str) else raw_body
        hdrs["Content-Type"] = "application/json"
    elif body is not None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        hdrs["Content-Type"] = "application/json"
    if headers:
        hdrs.update(headers)
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        try:
            conn.request(method, path, body=data, headers=hdrs)
        except (BrokenPipeError, ConnectionResetError):
            # The server may answer (e.g. 413) and close before reading the
            # whole body; its answer can still be waiting for us.
            if conn.sock is None:
                raise
        resp = conn.getresponse()
        raw = resp.read()
        out_headers = {}
        for k, v in resp.getheaders():
            k = k.lower()
            out_headers[k] = out_headers[k] + ", " + v if k in out_headers else v
        parsed = None
        if raw:
            try:
                parsed = json.loads(raw.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                parsed = None
        return resp.status, out_headers, parsed, raw
    finally:
        conn.close()


def request(method, path, body=None, headers=None, raw_body=None, *, port=None):
    """http_request against port, or against the server started last."""
    if port is None:
        if Server.current is None:
            raise RuntimeError("no server is running; pass port=")
        port = Server.current.port
    return http_request(port, method, path, body=body, headers=headers, raw_body=raw_body)


def wait_for(pred, timeout, what, step=0.05):
    """Polls pred() until it returns something true (returned) or timeout
    seconds pass (AssertionError naming what). Says so when it took long."""
    t0 = time.monotonic()
    while time.monotonic() < t0 + timeout:
        v = pred()
        if v:
            if time.monotonic() - t0 > 5:
                sys.stderr.write("slow: %.1f s waiting for %s\n" % (time.monotonic() - t0, what))
            return v
        time.sleep(step)
    raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))


def parse_metrics(text):
    """name{labels} -> value, for every sample line of a /metrics answer."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        out[key] = float(value)
    return out


def metric(server, sample):
    """One sample's value ('name' or 'name{labels}' as exposed), or None."""
    status, _, _, raw = http_request(server.port, "GET", "/metrics")
    if status != 200:
        raise AssertionError("GET /metrics answered %d" % status)
    return parse_metrics(raw.decode()).get(sample)


class PostLoad:
    """Client threads POSTing impressions with fresh ids ("<prefix>-<t>-<n>")
    until stop(), while a test breaks something. Keeps every id that got a
    202 (as its stream id, in acked), the count of each answer (answers), and
    every answer that is not allowed (bad): anything but 202 or 503 with
    Retry-After, a connection error, an answer slower than answer_within, or
    a 503 slower than refuse_within (seconds; None: no limit).

        load = PostLoad(server, "k", campaign="c").start()
        ... wait_for(lambda: load.count(202) > 100, ...) ...
        load.stop()
    """

    def __init__(self, server, prefix, campaign, threads=4, answer_within=None,
                 refuse_within=None, pause=0.0):
        self.server, self.prefix, self.campaign = server, prefix, campaign
        self.n_threads, self.pause = threads, pause
        self.answer_within, self.refuse_within = answer_within, refuse_within
        self.acked, self.answers, self.bad = set(), {}, []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []

    def _run(self, t):
        n = 0
        while not self._stop.is_set():
            id_ = "%s-%d-%d" % (self.prefix, t, n)
            n += 1
            t0 = time.monotonic()
            try:
                status, hdrs, _, raw = self.server.post("imp", {"id": id_,
                                                                K_CAMPANA: self.campaign})
            except OSError as ex:
                status, hdrs, raw = None, {}, repr(ex)
            took = time.monotonic() - t0
            with self._lock:
                self.answers[status] = self.answers.get(status, 0) + 1
                if status == 202:
                    self.acked.add(KIND_STREAM["imp"] + id_)
                elif status != 503 or "retry-after" not in hdrs:
                    self.bad.append((id_, status, raw))
                limit = self.refuse_within if status == 503 else None
                for lim in (limit, self.answer_within):
                    if lim is not None and took > lim:
                        self.bad.append((id_, status, "took %.2f s" % took))
                        break
            if self.pause:
                time.sleep(self.pause)

    def start(self):
        self._threads = [threading.Thread(target=self._run, args=(t,))
                         for t in range(self.n_threads)]
        for th in self._threads:
            th.start()
        return self

    def count(self, status):
        with self._lock:
            return self.answers.get(status, 0)

    def stop(self):
        self._stop.set()
        for th in self._threads:
            th.join()


def rastro(*args, timeout=CLI_TIMEOUT):
    """Runs the binary as a CLI; returns the CompletedProcess (text, UTF-8)."""
    return subprocess.run([BIN, *[str(a) for a in args]], capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=timeout,
                          stdin=subprocess.DEVNULL)


def events(data_dir, *args):
    """`rastro events --data DIR ARGS...` parsed: a list of dicts, one per line."""
    cp = rastro("events", "--data", data_dir, *args)
    if cp.returncode != 0:
        raise AssertionError("rastro events %s exited %d\nstdout:\n%s\nstderr:\n%s"
                             % (" ".join(map(str, args)), cp.returncode, cp.stdout[-4000:],
                                cp.stderr[-4000:]))
    out = []
    for n, line in enumerate(cp.stdout.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError as ex:
            raise AssertionError("rastro events line %d is not JSON (%s): %r"
                                 % (n, ex, line[:500]))
    return out


_live_servers = set()


@atexit.register
def _kill_leftovers():
    # Only servers this process started, by PID, and only if still running.
    for srv in list(_live_servers):
        try:
            srv.kill()
        except Exception:
            pass


class Server:
    """One `rastro serve` process on 127.0.0.1:<free port>."""

    current = None

    def __init__(self, data_dir=None, extra_args=()):
        self.extra_args = list(extra_args)
        self.work_dir = tempfile.mkdtemp(prefix="rastro-e2e-")
        self.owns_data = data_dir is None
        self.data_dir = data_dir if data_dir is not None else tempfile.mkdtemp(
            prefix="rastro-e2e-data-")
        self.port = None
        self.proc = None
        self.log_path = None
        self._log_file = None
        self._starts = 0

    # -- process control ---------------------------------------------------

    def _spawn(self):
        self.port = free_port()
        self._starts += 1
        self.log_path = os.path.join(self.work_dir, "server-%d.log" % self._starts)
        self._log_file = open(self.log_path, "wb")
        cmd = [BIN, "serve", "--listen", "%s:%d" % (HOST, self.port), "--data",
               self.data_dir] + self.extra_args
        self._log_file.write(("$ " + " ".join(cmd) + "\n").encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        _live_servers.add(self)

    def start(self):
        if self.running():
            raise RuntimeError("server already running")
        for attempt in range(3):
            self._spawn()
            deadline = time.monotonic() + START_TIMEOUT
            last_err = None
            while time.monotonic() < deadline:
                rc = self.proc.poll()
                if rc is not None:
                    self._close_log()
                    _live_servers.discard(self)
                    log = self.read_log()
                    if attempt < 2 and re.search(r"in use|EADDRINUSE|bind", log, re.I):
                        break   # lost the port race: try another port
                    self.dump_log("server exited with %d while starting" % rc)
                    raise AssertionError("rastro serve exited with %d while starting "
                                         "(log: %s)" % (rc, self.log_path))
                try:
                    status, _, body, _ = http_request(self.port, "GET", "/tracking/health",
                                                      timeout=2.0)
                    if status == 200:
                        Server.current = self
                        return self
                    last_err = "status %d body %r" % (status, body)
                except (OSError, http.client.HTTPException) as ex:
                    last_err = repr(ex)
                time.sleep(0.05)
            else:
                self.kill()
                self.dump_log("server did not become healthy in %.0f s" % START_TIMEOUT)
                raise AssertionError("GET /tracking/health did not answer 200 within %.0f s "
                                     "(last: %s)" % (START_TIMEOUT, last_err))
        raise AssertionError("could not start the server (port races?)")

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def pid(self):
        return self.proc.pid if self.proc is not None else None

    def signal(self, sig):
        """Sends sig to our server's PID (only if it is still our running child)."""
        if self.running():
            os.kill(self.proc.pid, sig)

    def stop(self, check=True):
        """SIGTERM, wait up to 30 s; returns the exit code (asserted 0 when check)."""
        if self.proc is None:
            raise RuntimeError("server was never started")
        self.signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            self.dump_log("server did not exit within %.0f s of SIGTERM" % STOP_TIMEOUT)
            raise AssertionError("rastro serve did not exit within %.0f s of SIGTERM"
                                 % STOP_TIMEOUT)
        finally:
            self._close_log()
            _live_servers.discard(self)
            if Server.current is self:
                Server.current = None
        if check and rc != 0:
            self.dump_log("server exited with %d after SIGTERM" % rc)
            raise AssertionError("rastro serve exited with %d after SIGTERM, expected 0 "
                                 "(log: %s)" % (rc, self.log_path))
        return rc

    def kill(self):
        """SIGKILL our server's PID and reap it."""
        if self.proc is None:
            return None
        self.signal(signal.SIGKILL)
        try:
            rc = self.proc.wait(timeout=STOP_TIMEOUT)
        finally:
            self._close_log()
            _live_servers.discard(self)
            if Server.current is self:
                Server.current = None
        return rc

    def cleanup(self):
        """Removes the temp folders (only when the server is not running)."""
        if self.running():
            return
        shutil.rmtree(self.work_dir, ignore_errors=True)
        if self.owns_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _close_log(self):
        if self._log_file is not None:
            try:
                self._log_file.close()
            except OSError:
                pass
            self._log_file = None

    def read_log(self):
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def dump_log(self, why="", tail_lines=200):
        log = self.read_log()
        lines = log.splitlines()
        if len(lines) > tail_lines:
            lines = ["... (%d lines cut)" % (len(lines) - tail_lines)] + lines[-tail_lines:]
        sys.stderr.write("\n===== rastro server log (%s) %s =====\n" % (self.log_path, why))
        sys.stderr.write("\n".join(lines) + "\n")
        sys.stderr.write("===== end of server log =====\n")
        sys.stderr.flush()

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.dump_log("after %s" % exc_type.__name__)
            if self.running():
                try:
                    self.stop(check=False)
                except Exception:
                    self.kill()
            return False
        if self.running():
            self.stop()
        return False

    # -- HTTP --------------------------------------------------------------

    def request(self, method, path, body=None, headers=None, raw_body=None,
                timeout=HTTP_TIMEOUT):
        return http_request(self.port, method, path, body=body, headers=headers,
                            raw_body=raw_body, timeout=timeout)

    def post(self, kind, body=None, raw_body=None, headers=None):
        """POST to /tracking/impresiones (kind "imp") or /tracking/conversiones ("conv")."""
        return self.request("POST", KIND_PATH[kind], body=body, raw_body=raw_body,
                            headers=headers)

    def get(self, path, min_position=None, **params):
        return self.request("GET", with_params(path, min_position=min_position, **params))


class ServerTestCase(unittest.TestCase):
    """A test class with one fresh server (fresh temp data folder) for all its tests."""

    server = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.server = Server()
        cls.server.start()

    @classmethod
    def tearDownClass(cls):
        srv, cls.server = cls.server, None
        if srv is not None:
            try:
                if srv.proc is not None and srv.proc.poll() is not None:
                    rc = srv.proc.returncode
                    srv.dump_log("server died during the tests")
                    raise AssertionError("the server died during the tests (exit %d)" % rc)
                srv.stop()   # asserts exit code 0 (ASan leak reports make it non-zero)
            finally:
                srv.cleanup()
        super().tearDownClass()

    def run(self, result=None):
        # On a failure or error print the tail of the server's log.
        if result is None:
            result = self.defaultTestResult()
        before = len(result.failures) + len(result.errors)
        out = super().run(result)
        if len(result.failures) + len(result.errors) > before:
            srv = type(self).server
            if srv is not None:
                srv.dump_log("after failed test %s" % self.id(), tail_lines=60)
        return out

    # -- assertions shared by the test files ---------------------------------

    def post_ok(self, kind, body, server=None):
        """POSTs and asserts 202 with the documented shape; returns the answer."""
        srv = server or self.server
        status, _, js, raw = srv.post(kind, body)
        self.assertEqual(status, 202, "POST %s %r -> %d %r (expected 202)"
                         % (KIND_PATH[kind], body, status, raw[:500]))
        self.assertIsInstance(js, dict, "202 body is not a JSON object: %r" % raw[:500])
        self.assertEqual(set(js), {"status", "id", "position"},
                         "202 body keys: %r" % js)
        self.assertEqual(js["status"], "EN_QUEUED", "202 status: %r" % js)
        self.assertIsInstance(js["position"], int, "position must be an integer: %r" % js)
        self.assertNotIsInstance(js["position"], bool)
        self.assertGreaterEqual(js["position"], 1, "positions start at 1: %r" % js)
        if isinstance(body, dict) and body.get("id") not in (None, ""):
            self.assertEqual(js["id"], body["id"], "202 must echo the given id")
        return js

    def assert_error(self, status, js, raw, expected_status, field=None, what=""):
        self.assertEqual(status, expected_status, "%s: got %d %r, expected %d"
                         % (what, status, raw[:500], expected_status))
        self.assertIsInstance(js, dict, "%s: error body is not a JSON object: %r"
                              % (what, raw[:500]))
        self.assertIsInstance(js.get("error"), str, "%s: no 'error' string in %r" % (what, js))
        self.assertTrue(js["error"], "%s: empty error message" % what)
        if field is not None:
            self.assertEqual(js.get("field"), field, "%s: wrong 'field' in %r" % (what, js))

    def query(self, path, min_position=None, expect=200, **params):
        """GET a query; asserts the status and X-Rastro-Position; returns (json, headers, raw)."""
        full = with_params(path, min_position=min_position, **params)
        status, headers, js, raw = self.server.request("GET", full)
        self.assertEqual(status, expect, "GET %s -> %d %r (expected %d)"
                         % (full, status, raw[:500], expect))
        self.assertIsInstance(js, dict, "GET %s: body is not a JSON object: %r"
                              % (full, raw[:500]))
        self.assertIn("x-rastro-position", headers,
                      "GET %s: no X-Rastro-Position header (headers %r)" % (full, headers))
        self.assertRegex(headers["x-rastro-position"].strip(), r"^\d+$",
                         "GET %s: X-Rastro-Position is not a number" % full)
        if min_position is not None and expect == 200:
            self.assertGreaterEqual(int(headers["x-rastro-position"]), min_position,
                                    "GET %s: X-Rastro-Position below min_position" % full)
        return js, headers, raw
