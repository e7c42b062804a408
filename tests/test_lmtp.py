"""LMTP delivery by the transport table (issue 13, item 2): `[transport]`
domains accepted from any client, all of a message's recipients at one
server in one LMTP transaction (against the real Dovecot peer on
127.0.0.1:24), per-recipient replies honoured, a server that is down
deferring the mail."""

import re
import socket
import socketserver
import subprocess
import threading
import time
import uuid

import pytest

from conftest import PEERS, PEERS_RUN, free_port, message
from test_queue_records import queue_json, report_for, wait_queue

DOVECOT_MAIL = PEERS_RUN / "dovecot" / "mail"
RELAY = "127.0.0.1[127.0.0.1]:24"


def dovecot_up():
    try:
        with socket.create_connection(("127.0.0.1", 24), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def dovecot():
    if not dovecot_up():
        subprocess.run([str(PEERS / "start.sh"), "dns", "dovecot"], check=True, capture_output=True)
    assert dovecot_up(), "the Dovecot LMTP peer is not listening on 127.0.0.1:24"


def dovecot_new(domain, user):
    d = DOVECOT_MAIL / domain / user / "Maildir" / "new"
    return sorted(d.iterdir()) if d.is_dir() else []


def wait_dovecot(domain, user, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        files = dovecot_new(domain, user)
        if files:
            return files
        time.sleep(0.1)
    raise AssertionError(f"nothing for {user}@{domain} in Dovecot's Maildir")


def transport(**entries):
    lines = "\n".join(f'"{k}" = "{v}"' for k, v in entries.items())
    return f"\n[transport]\n{lines}\n"


def test_an_address_of_a_local_domain_can_have_its_own_transport(daemon_factory, dovecot):
    """`[transport]` per address (Postfix's transport_maps, looked up by
    address first): bob@example.test goes to Dovecot by LMTP, with or
    without a +tag; alice of the same domain stays in her Maildir."""
    d = daemon_factory(extra=transport(**{"bob@example.test": "lmtp:127.0.0.1:24"}))
    token = uuid.uuid4().hex[:10]
    out = d.cli("route", "bob+x@example.test").stdout
    assert "bob+x@example.test -> bob+x@example.test (lmtp, 127.0.0.1:24)" in out, out
    with d.smtp() as s:
        s.sendmail("sender@example.org", ["bob+x@example.test", "alice@example.test"],
                   message(subject=f"per address {token}"))
    # Dovecot cuts the +tag itself (its recipient_delimiter); its
    # mailbox may hold other runs' copies: ours has the token.
    deadline = time.time() + 15
    found = []
    while not found and time.time() < deadline:
        found = [f for f in dovecot_new("example.test", "bob") if token in f.read_text()]
        time.sleep(0.1)
    assert found, "bob's copy is not in Dovecot"
    [f] = d.wait_mail("alice")
    assert token in f.read_text()
    assert d.new_mail("bob") == []


def test_two_recipients_arrive_in_one_lmtp_transaction(daemon_factory, dovecot):
    d = daemon_factory(extra=transport(**{"lmtp.test": "lmtp:[127.0.0.1]:24"}))
    u1, u2 = f"a{uuid.uuid4().hex[:10]}", f"b{uuid.uuid4().hex[:10]}"
    out = d.cli("route", f"{u1}@lmtp.test").stdout
    assert f"{u1}@lmtp.test -> {u1}@lmtp.test (lmtp, 127.0.0.1:24)" in out, out
    body = "Hello.\r\n.leading dot\r\n"
    with d.smtp() as s:
        s.sendmail("sender@example.org", [f"{u1}@lmtp.test", f"{u2}@lmtp.test"], message(body=body))
    for u in (u1, u2):
        [f] = wait_dovecot("lmtp.test", u)
        text = f.read_bytes().decode()
        assert "Received: from " in text and "by mx.example.test" in text
        assert "\n.leading dot" in text.replace("\r\n", "\n")
        assert "..leading dot" not in text
        assert "Return-Path: <sender@example.org>" in text
    ids = {}
    for u in (u1, u2):
        m = d.wait_log_re(
            rf"to=<{u}@lmtp.test>, orig_to=<{u}@lmtp.test>, relay={re.escape(RELAY)}, "
            rf"delay=[0-9.]+, dsn=2\.0\.0, status=sent \(delivered via {re.escape(RELAY)}: "
            rf"250 2\.0\.0 <{u}@lmtp.test> (\S+) Saved\)"
        )
        ids[u] = m.group(1)
    # Dovecot names its session in each reply: the second recipient's is
    # the first's with :R2, so both came in one transaction.
    assert ids[u2] == ids[u1] + ":R2", ids
    d.wait_log_re(r"\w+: removed")


def test_transport_domains_are_accepted_from_any_client_but_relaying_is_not(daemon_factory):
    d = daemon_factory(extra=transport(**{"lmtp.test": "lmtp:[127.0.0.1]:24", ".sub.test": "lmtp:unix:/nonexistent"}))
    with d.smtp(source="127.0.0.2") as s:
        s.ehlo("client.test")
        assert s.docmd("MAIL FROM:<someone@example.org>")[0] == 250
        assert s.docmd("RCPT TO:<x@lmtp.test>")[0] == 250
        assert s.docmd("RCPT TO:<x@a.sub.test>")[0] == 250
        code, resp = s.docmd("RCPT TO:<x@dest.test>")
        assert code == 554 and resp.startswith(b"5.7.1") and b"Relay access denied" in resp, resp
        code, resp = s.docmd("RCPT TO:<x@sub.test>")
        assert code == 554, resp


def test_a_server_that_is_down_defers_with_the_reason(daemon_factory):
    port = free_port()  # nothing listens there
    d = daemon_factory(extra=transport(**{"down.test": f"lmtp:127.0.0.1:{port}"}))
    with d.smtp() as s:
        s.sendmail("sender@example.org", ["x@down.test", "y@down.test"], message())
    relay = f"127.0.0.1[127.0.0.1]:{port}"
    for u in ("x", "y"):
        d.wait_log_re(
            rf"to=<{u}@down.test>, orig_to=<{u}@down.test>, relay={re.escape(relay)}, "
            rf"delay=[0-9.]+, dsn=4\.4\.1, status=deferred \(connect to {re.escape(relay)}: .*refused"
        )
    [entry] = wait_queue(d, lambda e: len(e) == 1 and e[0]["queue_name"] == "deferred")
    reasons = {r["address"]: r["delay_reason"] for r in entry["recipients"]}
    assert set(reasons) == {"x@down.test", "y@down.test"}
    assert all(f"connect to {relay}" in r for r in reasons.values()), reasons


class FakeLmtp(socketserver.StreamRequestHandler):
    """An LMTP server whose replies depend on the recipient: RCPT of bad@
    is refused (550 5.1.1), full@ is accepted but fails after the data
    (452 4.2.2), anyone else is delivered. No PIPELINING: commands come
    one at a time. Each session's lines go in `server.sessions`."""

    def reply(self, line):
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self):
        seen = []
        self.server.sessions.append(seen)
        self.reply("220 fake.test LMTP ready")
        accepted = []
        while True:
            raw = self.rfile.readline()
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip("\r\n")
            seen.append(line)
            verb = line.split(" ")[0].split(":")[0].upper()
            if verb == "LHLO":
                self.reply("250-fake.test\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES")
            elif verb == "MAIL":
                accepted = []
                self.reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                addr = line.split("<", 1)[1].split(">", 1)[0]
                if addr.startswith("bad@"):
                    self.reply(f"550-5.1.1 <{addr}> User doesn't exist\r\n550 5.1.1 (really)")
                else:
                    accepted.append(addr)
                    self.reply("250 2.1.5 Ok")
            elif verb == "DATA":
                self.reply("354 Go ahead")
                while True:
                    data = self.rfile.readline()
                    seen.append(data.decode(errors="replace").rstrip("\r\n"))
                    if data in (b".\r\n", b""):
                        break
                for addr in accepted:
                    if addr.startswith("full@"):
                        self.reply(f"452 4.2.2 <{addr}> Mailbox full")
                    else:
                        self.reply(f"250 2.0.0 <{addr}> Saved")
            elif verb == "RSET":
                accepted = []
                self.reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("502 5.5.2 Unknown command")


@pytest.fixture
def fake_lmtp():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), FakeLmtp)
    server.daemon_threads = True
    server.sessions = []
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()


def test_each_recipient_gets_its_own_reply(daemon_factory, fake_lmtp):
    port = fake_lmtp.server_address[1]
    d = daemon_factory(extra=transport(**{"fake.test": f"lmtp:127.0.0.1:{port}"}))
    relay = f"127.0.0.1[127.0.0.1]:{port}"
    rcpts = ["good@fake.test", "bad@fake.test", "full@fake.test"]
    body = "Gr\u00fc\u00dfe.\r\n.dot\r\n"
    with d.smtp() as s:
        s.sendmail("alice@example.test", rcpts, message(body=body), mail_options=["BODY=8BITMIME"])
    r = re.escape(relay)
    d.wait_log_re(rf"to=<good@fake.test>, orig_to=<good@fake.test>, relay={r}, delay=[0-9.]+, dsn=2\.0\.0, status=sent \(delivered via {r}: 250 2\.0\.0 <good@fake.test> Saved\)")
    d.wait_log_re(
        rf"to=<bad@fake.test>, orig_to=<bad@fake.test>, relay={r}, delay=[0-9.]+, dsn=5\.1\.1, status=bounced "
        rf"\(host {r} said: 550 5\.1\.1 <bad@fake.test> User doesn't exist \(really\) \(in reply to RCPT TO command\)\)"
    )
    d.wait_log_re(
        rf"to=<full@fake.test>, orig_to=<full@fake.test>, relay={r}, delay=[0-9.]+, dsn=4\.2\.2, status=deferred "
        rf"\(host {r} said: 452 4\.2\.2 <full@fake.test> Mailbox full \(in reply to end of DATA command\)\)"
    )
    # One transaction for the three: one MAIL, each RCPT, one DATA.
    first = fake_lmtp.sessions[0]
    assert first[0] == "LHLO mx.example.test"
    assert [l for l in first if l.startswith(("MAIL", "RCPT", "DATA"))] == [
        "MAIL FROM:<alice@example.test> BODY=8BITMIME",
        "RCPT TO:<good@fake.test>",
        "RCPT TO:<bad@fake.test>",
        "RCPT TO:<full@fake.test>",
        "DATA",
    ], first
    assert "..dot" in first
    # The bounce goes to the sender; only full@ waits in the queue.
    report = report_for(d, "alice")
    assert "Final-Recipient: rfc822; bad@fake.test" in report and "Status: 5.1.1" in report
    [entry] = wait_queue(d, lambda e: len(e) == 1 and len(e[0]["recipients"]) == 1)
    assert entry["recipients"][0]["address"] == "full@fake.test"
    assert "452 4.2.2" in entry["recipients"][0]["delay_reason"]
    # A retry (on a new or a reused connection) asks only for what is
    # pending.
    d.cli("queue", "flush")
    rcpts_sent = lambda: [l for s in fake_lmtp.sessions for l in s if l.startswith("RCPT")]
    deadline = time.time() + 10
    while len(rcpts_sent()) < 4 and time.time() < deadline:
        time.sleep(0.1)
    assert rcpts_sent()[3:] and set(rcpts_sent()[3:]) == {"RCPT TO:<full@fake.test>"}


def test_a_connection_is_reused_for_the_next_message(daemon_factory, fake_lmtp):
    port = fake_lmtp.server_address[1]
    d = daemon_factory(extra=transport(**{"fake.test": f"lmtp:127.0.0.1:{port}"}))
    for n in (1, 2):
        with d.smtp() as s:
            s.sendmail("sender@example.org", [f"u{n}@fake.test"], message(subject=f"m{n}"))
        d.wait_log_re(rf"to=<u{n}@fake.test>, .*status=sent")
    # Within the idle limit (2 s) the second message takes the first's
    # session, checked with RSET, without a new LHLO.
    assert len(fake_lmtp.sessions) == 1, fake_lmtp.sessions
    [session] = fake_lmtp.sessions
    assert [l for l in session if l.split(" ")[0] in ("LHLO", "RSET", "DATA")] == ["LHLO mx.example.test", "DATA", "RSET", "DATA"]


def test_check_names_a_bad_transport_entry(daemon_factory):
    d = daemon_factory(start=False, extra=transport(**{"lmtp.test": "frob:x"}))
    p = d.cli("check", check=False)
    assert p.returncode != 0
    assert 'transport."lmtp.test": unknown transport "frob"' in p.stdout + p.stderr
