"""End-to-end test harness: starts the real `postern` binary on a free
loopback port with a config written into a per-test directory, and talks to
it with real clients (smtplib, swaks).

Environment:
  POSTERN_BIN   the binary (default: target/release/postern)
  PEERS_RUN     the peers kit run directory (default /tmp/postern-peers)
"""

import contextlib
import os
import pathlib
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import textwrap
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(os.environ.get("POSTERN_BIN", ROOT / "target" / "release" / "postern"))
PEERS = ROOT.parent / "shared" / "peers"
PEERS_RUN = pathlib.Path(os.environ.get("PEERS_RUN", "/tmp/postern-peers"))
DNS = "127.0.0.1:5353"
PLUGINS = ROOT / "target" / "wasm32-wasip2" / "plugin"
# Compiled plugins are shared by every daemon of the run (Python takes
# seconds), sealed with one key (made by the first daemon or tool).
CACHE = ROOT / "target" / "test-plugin-cache"
CACHE_KEY = ROOT / "target" / "test-plugin-cache.key"


def plugin_path(name):
    """Path of a built plugin component, e.g. plugin_path("access")."""
    for candidate in (PLUGINS / f"postern_plugin_{name}.wasm", PLUGINS / f"postern_test_{name}.wasm"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"plugin {name} not built (plugins/build.sh --tests)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20.0, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"postern exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not listening after {timeout}s")


# Mail for other domains goes to the test zone's MX hosts (127.0.0.10/11,
# .12) at this port, where nothing listens: it is deferred (connection
# refused) unless a test starts a server and gives its port.
NO_REMOTE = "port = 9"

BASE_CONFIG = """
[server]
hostname = "mx.example.test"
spool_dir = "var/spool"
trusted_networks = ["127.0.0.1/32"]
shutdown_grace = "10s"
# The tests start the daemon as root; those about server.user set one.
run_as_root = true

[[listener]]
name = "mx"
address = "127.0.0.1:{port}"

[dns]
nameservers = ["{dns}"]
timeout = "1s"

[smtp]
{smtp}

[smtp_client]
{client}

[local]
domains = ["example.test"]
users = ["alice", "bob"]
maildir = "var/mail/{{user}}/Maildir"

[aliases]
postmaster = "alice"
abuse = "alice"
team = ["alice", "bob"]
# Addresses that make the misbehaving test plugin misbehave.
loop = "alice"
hog = "alice"
sleep = "alice"
flood = "alice"
trap = "alice"

[queue]
retry_initial = "{retry}"
retry_max = "{retry}"

[wasm]
cache_dir = "{cache}"
cache_key = "{cache}.key"
max_instances = 200
{extra}
"""


def quickstart_account():
    """The account examples/quickstart.toml runs as (`server.user`), made
    as ./quickstart.sh makes it."""
    subprocess.run([str(ROOT / "quickstart.sh"), "--account"], check=True, capture_output=True)
    return "postern"


@contextlib.contextmanager
def example_daemon(config, spool, log_dir, ports):
    """Runs an example config (`examples/.../postern.toml`) from the repo
    root, as its README says, as its server.user: checks that its ports
    are free, starts from an empty spool, waits for every port, and stops
    it and removes the spool afterwards. Needs root (skips otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("the example runs as server.user postern: started as root")
    quickstart_account()
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    shutil.rmtree(spool, ignore_errors=True)
    log = open(log_dir / "postern.log", "wb")
    proc = subprocess.Popen([str(BIN), "run", "--config", config], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        for port in ports:
            wait_port(port, proc=proc)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(spool, ignore_errors=True)


class Daemon:
    """One postern process with its own directory, config and log."""

    def __init__(self, workdir, smtp="", extra="", retry="1s", config=None, client=NO_REMOTE):
        self.dir = pathlib.Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        text = config if config is not None else BASE_CONFIG
        self.config_text = textwrap.dedent(text).format(
            port=self.port, dns=DNS, smtp=smtp, extra=extra, retry=retry, cache=CACHE, client=client
        )
        self.client = client
        self.config = self.dir / "postern.toml"
        self.config.write_text(self.config_text)
        self.log = self.dir / "postern.log"
        self.proc = None

    def add_queue_setting(self, line):
        """Adds `line` to the config's [queue] table (before a start)."""
        self.config_text = self.config_text.replace("[queue]\n", f"[queue]\n{line}\n", 1)
        self.config.write_text(self.config_text)

    def start(self, wait=True):
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [str(BIN), "run", "--config", str(self.config)],
            cwd=self.dir,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env={**os.environ, "POSTERN_LOG": os.environ.get("POSTERN_LOG", "info")},
        )
        logf.close()
        if wait:
            wait_port(self.port, proc=self.proc)
        return self

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def log_text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, needle, timeout=10.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if needle in self.log_text():
                return
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not in log:\n{self.log_text()[-3000:]}")

    def wait_log_re(self, pattern, timeout=10.0):
        """Waits for a log line matching `pattern` (logs are written by a
        writer thread, a moment after the event); returns the match."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = re.search(pattern, self.log_text())
            if m:
                return m
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not in log:\n{self.log_text()[-3000:]}")

    def maildir(self, user, folder=""):
        return self.dir / "var" / "mail" / user / "Maildir" / folder

    def new_mail(self, user, folder=""):
        d = self.maildir(user, folder) / "new"
        return sorted(d.iterdir()) if d.is_dir() else []

    def wait_mail(self, user, count=1, folder="", timeout=10.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            files = self.new_mail(user, folder)
            if len(files) >= count:
                return files
            time.sleep(0.05)
        raise AssertionError(
            f"{user}{'/' + folder if folder else ''}: {len(self.new_mail(user, folder))} of {count} "
            f"messages after {timeout}s\n{self.log_text()[-3000:]}"
        )

    def queue_files(self):
        q = self.dir / "var" / "spool" / "queue"
        return sorted(p.name for p in q.iterdir() if "." not in p.name) if q.is_dir() else []

    def rewrite(self, extra=None, smtp=None):
        """Writes a new config (same port) for reload tests."""
        text = textwrap.dedent(BASE_CONFIG).format(
            port=self.port, dns=DNS, smtp=smtp or "", extra=extra or "", retry="1s", cache=CACHE,
            client=self.client,
        )
        self.config.write_text(text)
        self.config_text = text

    def cli(self, *args, check=True):
        return subprocess.run(
            [str(BIN), *args, "--config", str(self.config)],
            cwd=self.dir,
            capture_output=True,
            text=True,
            check=check,
        )

    def smtp(self, source="127.0.0.1", **kw):
        return smtplib.SMTP("127.0.0.1", self.port, source_address=(source, 0), timeout=10, **kw)


@pytest.fixture
def daemon_factory(tmp_path):
    made = []

    def make(name="d", start=True, **kw):
        d = Daemon(tmp_path / name, **kw)
        made.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in made:
        d.stop()


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory()


def swaks(*args, timeout=30):
    """Runs swaks; returns (exit code, combined output)."""
    if shutil.which("swaks") is None:
        pytest.fail("swaks is not installed (run ../shared/peers/install.sh)")
    p = subprocess.run(
        ["swaks", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return p.returncode, p.stdout + p.stderr


def message(subject="test", body="Hello.\r\n", extra_headers="", mid=True):
    hdr = f"From: sender@example.org\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
    if mid:
        hdr += f"Message-ID: <{time.time_ns()}@example.org>\r\nDate: Sat, 28 Nov 2026 12:00:00 +0000\r\n"
    return (hdr + extra_headers + "\r\n" + body).encode()


def raw_session(port, data, source="127.0.0.1", read_timeout=5.0):
    """Sends raw bytes after reading the greeting; returns everything read
    until the server closes or goes quiet."""
    s = socket.create_connection(("127.0.0.1", port), timeout=read_timeout, source_address=(source, 0))
    out = b""
    try:
        out += s.recv(4096)
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.settimeout(1.0)
        while True:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            out += chunk
    finally:
        s.close()
    return out.decode(errors="replace")
