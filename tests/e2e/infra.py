"""
infra.py - the real servers the distributed tests need, started by the tests
themselves on free loopback ports in temporary folders and stopped by PID:
nats-server with JetStream (one, or a three-node cluster) and databases on
the throwaway PostgreSQL cluster ctest starts (tools/testpg.sh, found
through RASTRO_TEST_PG_DIR). Also a minimal NATS publisher speaking the
plain text protocol over a socket, for messages the product would never
send (poison commands).

Python 3 standard library only.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from harness import HOST, _live_servers, free_port, rastro

NATS_BIN = shutil.which("nats-server") or "/usr/sbin/nats-server"
PG_DIR = os.environ.get("RASTRO_TEST_PG_DIR", "")

# what this process started is killed at exit with the servers (harness.py)
_live = _live_servers


def wait_port(port, timeout=15.0):
    """Until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class NatsServer:
    """One nats-server with JetStream on 127.0.0.1; optionally part of a
    cluster (configure() with the others' route ports before start())."""

    def __init__(self, name="n1"):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="rastro-nats-")
        self.port = free_port()
        self.cluster_port = None
        self.routes = []
        self.proc = None
        self.log_path = os.path.join(self.dir, "nats.log")

    @property
    def url(self):
        return "nats://%s:%d" % (HOST, self.port)

    def _config(self):
        lines = [
            'server_name: "%s"' % self.name,
            'listen: "%s:%d"' % (HOST, self.port),
            'jetstream { store_dir: "%s" }' % os.path.join(self.dir, "js"),
        ]
        if self.cluster_port is not None:
            routes = ", ".join('"nats-route://%s:%d"' % (HOST, p) for p in self.routes)
            lines.append('cluster { name: "rastro-test", listen: "%s:%d", routes: [%s] }'
                         % (HOST, self.cluster_port, routes))
        path = os.path.join(self.dir, "nats.conf")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def start(self, wait=True):
        """Starts it (again, on the same port and store folder after stop())."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([NATS_BIN, "-c", self._config()], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        _live.add(self)
        if wait and not wait_port(self.port):
            raise AssertionError("nats-server %s did not listen on %d" % (self.name, self.port))
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        """SIGTERM to our nats-server's PID and wait."""
        if self.running():
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        _live.discard(self)

    def kill(self):
        if self.running():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        _live.discard(self)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def nats_cluster(n=3):
    """n servers routed to each other (not started)."""
    nodes = [NatsServer("n%d" % (i + 1)) for i in range(n)]
    for node in nodes:
        node.cluster_port = free_port()
    for node in nodes:
        node.routes = [o.cluster_port for o in nodes if o is not node]
    return nodes


def nats_request(port, subject, payload):
    """A NATS request (e.g. a JetStream API call): publishes with a reply
    inbox and returns the first answer's payload."""
    with socket.create_connection((HOST, port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()    # INFO
        data = payload if isinstance(payload, bytes) else payload.encode()
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n'
                  b"SUB _INBOX.rastro.test 1\r\n"
                  b"PUB %s _INBOX.rastro.test %d\r\n" % (subject.encode(), len(data))
                  + data + b"\r\n")
        while True:
            line = f.readline()
            if not line:
                raise AssertionError("NATS closed the connection")
            if line.startswith(b"PING"):
                s.sendall(b"PONG\r\n")
            elif line.startswith(b"MSG "):
                n = int(line.split()[-1])
                body = f.read(n)
                f.read(2)
                return body
            elif line.startswith(b"-ERR"):
                raise AssertionError("NATS said %r" % line)


def nats_publish(url_port, subject, payload, headers=None):
    """Publishes one message with the plain NATS protocol (PUB, or HPUB with
    headers) and waits for the server's PONG, so it has been processed."""
    with socket.create_connection((HOST, url_port), timeout=5) as s:
        f = s.makefile("rb")
        f.readline()    # INFO {...}
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
        data = payload if isinstance(payload, bytes) else payload.encode()
        if headers:
            hdr = "NATS/1.0\r\n" + "".join("%s: %s\r\n" % kv for kv in headers.items()) + "\r\n"
            hdr = hdr.encode()
            s.sendall(b"HPUB %s %d %d\r\n" % (subject.encode(), len(hdr), len(hdr) + len(data))
                      + hdr + data + b"\r\n")
        else:
            s.sendall(b"PUB %s %d\r\n" % (subject.encode(), len(data)) + data + b"\r\n")
        s.sendall(b"PING\r\n")
        while True:
            line = f.readline()
            if not line:
                raise AssertionError("NATS closed the connection")
            if line.startswith(b"PONG"):
                return
            if line.startswith(b"-ERR"):
                raise AssertionError("NATS said %r" % line)


# -- PostgreSQL ---------------------------------------------------------------

def psql(url, sql):
    """Runs sql with psql; returns its rows as lists of strings."""
    cp = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                         "-d", url, "-c", sql], capture_output=True, text=True, timeout=60,
                        stdin=subprocess.DEVNULL)
    if cp.returncode != 0:
        raise AssertionError("psql %r failed: %s" % (sql, cp.stderr))
    return [line.split("\t") for line in cp.stdout.splitlines() if line]


def new_database(tag):
    """A fresh database on the test cluster; returns its URL."""
    with open(os.path.join(PG_DIR, "url")) as f:
        base = f.read().strip()
    name = "e2e_%s_%d" % (tag, os.getpid())
    psql(base, "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
    psql(base, "CREATE DATABASE %s" % name)
    return base.rsplit("/", 1)[0] + "/" + name


def migrated(tag):
    """A fresh database with rastro's schema applied; returns its URL."""
    url = new_database(tag)
    cp = rastro("migrate", "--store", url)
    assert cp.returncode == 0, cp.stderr
    return url
