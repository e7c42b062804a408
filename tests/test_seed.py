"""examples/seed/postern.toml as its contract says: started in the
repository root as it is (ports 2525 and 5870, DNS at 127.0.0.1:5353),
it serves example.test, the virtual alias domains of examples/seed/virtual,
lmtp.test through Dovecot, and everything else by MX on port 25 (a
scripted server on 127.0.0.10:25 plays dest.test's best MX)."""

import smtplib
import threading
import time
import uuid

import pytest

from conftest import ROOT, example_daemon, message, swaks
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
    mx = Server(("127.0.0.10", 25), Scripted)
    mx.sessions, mx.offer, mx.cert, mx.password = [], ["PIPELINING", "8BITMIME"], None, ""
    mx.tmp_ok, mx.slow, mx.received = False, threading.Event(), []
    threading.Thread(target=mx.serve_forever, daemon=True).start()
    try:
        with example_daemon("examples/seed/postern.toml", SPOOL, tmp_path, (2525, 5870)):
            yield mx
    finally:
        mx.shutdown()
        mx.server_close()


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


# The MX's restriction chain (issue 14): from untrusted clients to
# alice@example.test, through the DNS peer's zones. Each case is
# (client address, HELO, sender, expected code, enhanced code prefix, text).
RESTRICTED = [
    # reject_rbl_client dnsbl.test: both listed addresses, the list named.
    ("127.0.0.2", "client.example.test", "a@example.test", 554, "5.7.1", "dnsbl.test"),
    ("127.0.0.99", "dyn-127-0-0-99.pool.test", "a@example.test", 554, "5.7.1", "dnsbl.test"),
    # reject_rhsbl_sender rhsbl.test.
    ("198.18.0.25", "mail.good.test", "x@spammer.test", 554, "5.7.1", "rhsbl.test"),
    # reject_unknown_sender_domain.
    ("198.18.0.25", "mail.good.test", "x@doesnotexist.test", 450, "4.1.8", "Domain not found"),
    # reject_non_fqdn_helo_hostname.
    ("198.18.0.25", "mailhost", "x@good.test", 504, "5.5.2", "fully-qualified"),
    # SPF -all from an address the record does not name.
    ("198.18.0.25", "mail.good.test", "x@spf-fail.test", 550, "5.7.23", "SPF fail"),
]


@pytest.mark.parametrize("source,helo,sender,code,enhanced,text", RESTRICTED,
                         ids=["dnsbl-127.0.0.2", "dnsbl-127.0.0.99", "rhsbl-sender",
                              "unknown-sender-domain", "non-fqdn-helo", "spf-fail"])
def test_the_seed_mx_refuses_what_its_restrictions_refuse(seed, source, helo, sender, code,
                                                          enhanced, text):
    with smtplib.SMTP("127.0.0.1", 2525, source_address=(source, 0), timeout=20) as s:
        s.ehlo(helo)
        assert s.mail(sender)[0] == 250
        got, resp = s.rcpt("alice@example.test")
    assert got == code, resp
    assert resp.startswith(enhanced.encode()), resp
    assert text.encode() in resp, resp


def test_the_seed_mx_accepts_a_clean_client_with_score_and_spf_headers(seed):
    token = uuid.uuid4().hex[:10]
    with smtplib.SMTP("127.0.0.1", 2525, source_address=("198.18.0.25", 0), timeout=20) as s:
        s.ehlo("mail.good.test")
        # A virtual alias domain (in no DNS) is ours: not looked up.
        assert s.sendmail("bob@good.test", ["alice@example.test", "x@other.test"],
                          message(subject=f"clean {token}")) == {}
    wait_subject("bob", token)
    [f] = wait_subject("alice", token)
    text = f.read_text()
    head = text.split("\n\n", 1)[0]
    assert "\nX-Postern-Score: " in head, head
    assert "PW_CL_IP_EQ_FROM_MX" in head, head
    assert "\nReceived-SPF: pass (mx.example.test:" in head, head


def test_the_seed_restrictions_leave_trusted_and_authenticated_clients_alone(seed):
    # 127.0.0.1 is in trusted_networks: a HELO that is not a domain and a
    # sender domain that does not exist pass, as permit_mynetworks does
    # before every other restriction.
    with smtplib.SMTP("127.0.0.1", 2525, timeout=20) as s:
        s.ehlo("mailhost")
        assert s.mail("x@doesnotexist.test")[0] == 250
        assert s.rcpt("alice@example.test")[0] == 250
