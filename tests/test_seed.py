"""examples/seed/postern.toml as its contract says: started in the
repository root as it is (ports 2525 and 5870, DNS at 127.0.0.1:5353),
it serves example.test, the virtual alias domains of examples/seed/virtual,
lmtp.test through Dovecot, and everything else by MX on port 25 (a
scripted server on 127.0.0.10:25 plays dest.test's best MX)."""

import os
import shutil
import smtplib
import socket
import subprocess
import threading
import time
import uuid

import pytest

from conftest import BIN, ROOT, message, quickstart_account, swaks, wait_port
from test_lmtp import wait_dovecot
from test_smtp_client import Scripted, Server

SEED = ROOT / "examples" / "seed" / "postern.toml"
SPOOL = ROOT / "var" / "seed"


def mailbox(user):
    return ROOT / "var" / "mail" / user / "Maildir" / "new"


def wait_subject(user, subject, count=1, timeout=15.0):
    """Files in `user`'s Maildir whose text has `subject` (the Maildir is
    shared with other runs of the quickstart: the token picks ours)."""
    deadline = time.time() + timeout
    found = []
    while time.time() < deadline:
        d = mailbox(user)
        found = [f for f in d.iterdir() if subject in f.read_text(errors="replace")] if d.is_dir() else []
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{user}: {len(found)} of {count} with {subject!r}")


@pytest.fixture
def seed(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the seed example runs as server.user postern: started as root")
    quickstart_account()
    for port in (2525, 5870):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    mx = Server(("127.0.0.10", 25), Scripted)
    mx.sessions, mx.offer, mx.cert, mx.password = [], ["PIPELINING", "8BITMIME"], None, ""
    mx.tmp_ok, mx.slow, mx.received = False, threading.Event(), []
    threading.Thread(target=mx.serve_forever, daemon=True).start()
    shutil.rmtree(SPOOL, ignore_errors=True)
    log = open(tmp_path / "postern.log", "wb")
    proc = subprocess.Popen([str(BIN), "run", "--config", "examples/seed/postern.toml"], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(2525, proc=proc)
        wait_port(5870, proc=proc)
        yield mx
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        mx.shutdown()
        mx.server_close()
        shutil.rmtree(SPOOL, ignore_errors=True)


def test_the_seed_example_serves_what_its_contract_says(seed):
    mx = seed
    token = uuid.uuid4().hex[:10]
    rcpts = ["info@virtual.test", "team@virtual.test", "x@other.test", "alice+news@example.test",
             f"u{token}@lmtp.test", "ext@virtual.test"]
    with smtplib.SMTP("127.0.0.1", 2525, timeout=10) as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls")
        # An address the virtual domain does not have.
        s.mail("someone@dest.test")
        code, resp = s.rcpt("nobody@virtual.test")
        assert code == 550 and resp.startswith(b"5.1.1"), resp
        s.rset()
        assert s.sendmail("someone@dest.test", rcpts, message(subject=f"seed {token}")) == {}
    # info@ and team@ to alice (one copy: the same address twice after
    # expansion is delivered once, as Postfix's cleanup does), +tag kept
    # apart; team@ and the catch-all to bob (one copy).
    alice = wait_subject("alice", token, count=2)
    assert any("Delivered-To: alice+news@example.test" in f.read_text() for f in alice)
    assert any("Delivered-To: alice@example.test" in f.read_text() for f in alice)
    [bob] = wait_subject("bob", token, count=1)
    assert "Delivered-To: bob@example.test" in bob.read_text()
    # lmtp.test in Dovecot's Maildir.
    [f] = wait_dovecot("lmtp.test", f"u{token}")
    assert token in f.read_text()
    # ext@ forwarded by MX: dest.test's best MX, port 25.
    deadline = time.time() + 15
    while not any(token in m for m in mx.received) and time.time() < deadline:
        time.sleep(0.1)
    [got] = [m for m in mx.received if token in m]
    assert "RCPT TO:<friend@dest.test>" in got
    # Submission: STARTTLS and AUTH required, then relayed by MX.
    rc, out = swaks("--server", "127.0.0.1:5870", "--from", "alice@example.test", "--to", "far@dest.test")
    assert rc != 0 and "530" in out, out
    rc, out = swaks("--server", "127.0.0.1:5870", "--tls", "--auth", "PLAIN", "--auth-user", "alice@example.test",
                    "--auth-password", "alice-secret", "--from", "alice@example.test", "--to", "far@dest.test",
                    "--header", f"Subject: submitted {token}")
    assert rc == 0 and "queued as" in out, out
    deadline = time.time() + 15
    while not any(f"submitted {token}" in m for m in mx.received) and time.time() < deadline:
        time.sleep(0.1)
    [got] = [m for m in mx.received if f"submitted {token}" in m]
    assert "RCPT TO:<far@dest.test>" in got and "MAIL FROM:<alice@example.test>" in got
