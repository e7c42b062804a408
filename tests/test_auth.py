"""SMTP AUTH end to end: submission listeners with real clients (swaks, a
SCRAM-SHA-256 client), Postern's password file, a real Dovecot auth
service, and saslauthd when it can run here."""

import base64
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from conftest import BIN, PEERS, PEERS_RUN, free_port, message, plugin_path, swaks, wait_port

CA = PEERS_RUN / "tls" / "ca.crt"
CERT = PEERS_RUN / "tls" / "server-chain.crt"
KEY = PEERS_RUN / "tls" / "server.key"
DOVECOT_SOCKET = PEERS_RUN / "dovecot" / "auth-client"
SCRAM_CLIENT = PEERS / "bin" / "smtp-scram.py"


def submission(sub_port, smtps_port, backend="local", backends=None):
    auth = backends if backends is not None else """
[[auth]]
name = "local"
backend = "passwd"
path = "var/passwd"
"""
    return f"""
[tls]
certificate = "{CERT}"
key = "{KEY}"

[[listener]]
name = "submission"
address = "127.0.0.1:{sub_port}"
tls = "encrypt"
auth = "{backend}"
auth_required = true

[[listener]]
name = "submissions"
address = "127.0.0.1:{smtps_port}"
tls = "implicit"
auth = "{backend}"
auth_required = true

{auth}
"""


def add_user(d, user, password, cram=True):
    args = [str(BIN), "user", "--config", str(d.config), "add", user, "--password-stdin"]
    if cram:
        args.append("--cram-md5")
    p = subprocess.run(args, input=password + "\n", capture_output=True, text=True, cwd=d.dir)
    assert p.returncode == 0, p.stderr
    assert password not in p.stdout + p.stderr


@pytest.fixture
def sub(daemon_factory):
    """A daemon with submission (5870-like) and implicit TLS listeners and
    two users in its password file."""
    sub_port, smtps_port = free_port(), free_port()
    d = daemon_factory(start=False, extra=submission(sub_port, smtps_port))
    (d.dir / "var").mkdir(parents=True, exist_ok=True)
    add_user(d, "alice@example.test", "alice-secret")
    add_user(d, "bob@example.test", "bob-secret", cram=False)
    d.start()
    wait_port(sub_port)
    wait_port(smtps_port)
    d.sub_port, d.smtps_port = sub_port, smtps_port
    return d


def swaks_auth(port, mech, user, password, implicit=False, to="someone@dest.test", sender=None):
    tls = ["--tlsc"] if implicit else ["--tls"]
    return swaks("--server", f"127.0.0.1:{port}", *tls, "--tls-verify", "--tls-ca-path", str(CA),
                 "--tls-sni", "mx.test", "--auth", mech, "--auth-user", user, "--auth-password", password,
                 "--helo", "client.test", "--from", sender or user, "--to", to)


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "CRAM-MD5"])
@pytest.mark.parametrize("implicit", [False, True])
def test_swaks_auth_relays_to_external_domain(sub, mech, implicit):
    port = sub.smtps_port if implicit else sub.sub_port
    rc, out = swaks_auth(port, mech, "alice@example.test", "alice-secret", implicit=implicit)
    assert rc == 0, out
    assert "235 2.7.0 Authentication successful" in out
    qid = re.search(r"250 2\.0\.0 Ok: queued as ([0-9A-F]{16})", out).group(1)
    # Relayed mail to another domain is accepted and queued.
    sub.wait_log(f"{qid}: to=<someone@dest.test>")
    listing = sub.cli("queue", "list").stdout
    assert qid in listing and "someone@dest.test" in listing
    sub.wait_log(f"AUTH {mech} ok, sasl_username=alice@example.test")
    assert "alice-secret" not in sub.log_text()


def test_scram_sha_256(sub):
    p = subprocess.run(["python3", str(SCRAM_CLIENT), "127.0.0.1", str(sub.sub_port), "alice@example.test",
                        "alice-secret", "SCRAM-SHA-256", "--cafile", str(CA),
                        "--send", "alice@example.test", "friend@dest.test"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "235" in p.stdout
    sub.wait_log("AUTH SCRAM-SHA-256 ok, sasl_username=alice@example.test")
    p = subprocess.run(["python3", str(SCRAM_CLIENT), "127.0.0.1", str(sub.sub_port), "alice@example.test",
                        "wrong", "SCRAM-SHA-256", "--cafile", str(CA)], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "535" in p.stdout + p.stderr


def test_scram_keys_come_from_the_saslprepped_password(sub):
    # Set with a soft hyphen (U+00AD), which SASLprep maps to nothing: a
    # SCRAM client that normalises (as RFC 5802 asks) hashes "password".
    add_user(sub, "carol@example.test", "pass\u00adword", cram=False)
    p = subprocess.run(["python3", str(SCRAM_CLIENT), "127.0.0.1", str(sub.sub_port), "carol@example.test",
                        "password", "SCRAM-SHA-256", "--cafile", str(CA)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    sub.wait_log("AUTH SCRAM-SHA-256 ok, sasl_username=carol@example.test")


def test_wrong_password_is_535_and_logged_without_the_password(sub):
    rc, out = swaks_auth(sub.sub_port, "PLAIN", "alice@example.test", "not-her-password")
    assert rc != 0
    assert "535 5.7.8" in out
    sub.wait_log_re(r"AUTH PLAIN failed \(.*alice@example\.test.*\)")
    assert "not-her-password" not in sub.log_text()
    # Unknown users get the same answer.
    rc, out = swaks_auth(sub.sub_port, "LOGIN", "nobody@example.test", "x")
    assert "535 5.7.8" in out


def test_cram_md5_needs_a_stored_secret(sub):
    rc, out = swaks_auth(sub.sub_port, "CRAM-MD5", "bob@example.test", "bob-secret")
    assert "535 5.7.8" in out
    rc, out = swaks_auth(sub.sub_port, "PLAIN", "bob@example.test", "bob-secret", to="alice@example.test")
    assert rc == 0, out


def test_auth_before_starttls_is_refused(sub):
    assert_no_auth_before_starttls(sub.sub_port)


def test_encrypt_listener_never_offers_auth_before_starttls(daemon_factory):
    # tls = "encrypt" is Postfix's smtpd_tls_security_level = encrypt, where
    # nothing but EHLO, STARTTLS, NOOP, RSET and QUIT comes before TLS:
    # auth_only_with_tls = false must not open AUTH in clear there.
    sub_port, smtps_port = free_port(), free_port()
    extra = submission(sub_port, smtps_port).replace(
        'tls = "encrypt"', 'tls = "encrypt"\nauth_only_with_tls = false')
    d = daemon_factory(start=False, extra=extra)
    (d.dir / "var").mkdir(parents=True, exist_ok=True)
    add_user(d, "alice@example.test", "alice-secret")
    p = d.cli("check")
    assert "auth_only_with_tls" not in p.stderr, p.stderr
    d.start()
    wait_port(sub_port)
    assert_no_auth_before_starttls(sub_port)


def assert_no_auth_before_starttls(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO client.test\r\n")
        ehlo = []
        while True:
            line = f.readline()
            ehlo.append(line)
            if line.startswith(b"250 "):
                break
        assert not any(b"AUTH" in l for l in ehlo)
        cred = base64.b64encode(b"\0alice@example.test\0alice-secret")
        s.sendall(b"AUTH PLAIN " + cred + b"\r\n")
        assert f.readline().startswith(b"530 5.7.0 Must issue a STARTTLS command first")
        s.sendall(b"MAIL FROM:<alice@example.test>\r\n")
        assert f.readline().startswith(b"530 5.7.0")


def test_mail_before_auth_is_refused_on_submission(sub):
    ctx = ssl.create_default_context(cafile=str(CA))
    with smtplib.SMTP_SSL("127.0.0.1", sub.smtps_port, context=ctx, timeout=10) as s:
        s.ehlo("client.test")
        assert "auth" in s.esmtp_features
        code, resp = s.docmd("MAIL FROM:<alice@example.test>")
        assert code == 530 and resp.startswith(b"5.7.0")


def test_password_change_takes_effect_without_restart(sub):
    rc, out = swaks_auth(sub.sub_port, "PLAIN", "alice@example.test", "alice-secret", to="bob@example.test")
    assert rc == 0, out
    p = subprocess.run([str(BIN), "user", "--config", str(sub.config), "passwd", "alice@example.test",
                        "--password-stdin"], input="new-secret\n", capture_output=True, text=True, cwd=sub.dir)
    assert p.returncode == 0, p.stderr
    rc, out = swaks_auth(sub.sub_port, "PLAIN", "alice@example.test", "alice-secret", to="bob@example.test")
    assert "535 5.7.8" in out
    rc, out = swaks_auth(sub.sub_port, "PLAIN", "alice@example.test", "new-secret", to="bob@example.test")
    assert rc == 0, out
    # New users too, and deleted ones are gone at once.
    add_user(sub, "carol@example.test", "carol-secret")
    rc, out = swaks_auth(sub.sub_port, "LOGIN", "carol@example.test", "carol-secret", to="bob@example.test")
    assert rc == 0, out
    p = subprocess.run([str(BIN), "user", "--config", str(sub.config), "del", "carol@example.test"],
                       capture_output=True, text=True, cwd=sub.dir)
    assert p.returncode == 0
    rc, out = swaks_auth(sub.sub_port, "LOGIN", "carol@example.test", "carol-secret", to="bob@example.test")
    assert "535 5.7.8" in out
    listing = subprocess.run([str(BIN), "user", "--config", str(sub.config), "list"],
                             capture_output=True, text=True, cwd=sub.dir).stdout
    assert "alice@example.test" in listing and "carol" not in listing


def test_sender_must_be_owned_by_the_authenticated_user(sub):
    ctx = ssl.create_default_context(cafile=str(CA))
    with smtplib.SMTP_SSL("127.0.0.1", sub.smtps_port, context=ctx, timeout=10) as s:
        s.ehlo("client.test")
        s.login("alice@example.test", "alice-secret")
        code, resp = s.docmd("MAIL FROM:<bob@example.test>")
        assert code == 553 and resp.startswith(b"5.7.1")
        assert s.docmd("MAIL FROM:<alice+lists@example.test>")[0] == 250
        s.rset()
        assert s.docmd("MAIL FROM:<alice@example.test>")[0] == 250


def test_repeated_failures_are_throttled_then_disconnected(sub):
    ctx = ssl.create_default_context(cafile=str(CA))
    with smtplib.SMTP_SSL("127.0.0.1", sub.smtps_port, context=ctx, timeout=20) as s:
        s.ehlo("client.test")
        codes, times = [], []
        for i in range(3):
            t0 = time.time()
            cred = base64.b64encode(b"\0alice@example.test\0wrong").decode()
            try:
                codes.append(s.docmd("AUTH", "PLAIN " + cred)[0])
            except smtplib.SMTPServerDisconnected:
                codes.append("closed")
            times.append(time.time() - t0)
    assert codes[:2] == [535, 535]
    assert codes[2] == 421
    # The delay grows with the earlier failures of this address (the
    # first attempt of a client with none is answered at once, success
    # or failure alike).
    assert times[2] > times[1] >= 0.9


def test_a_client_that_keeps_failing_is_refused_even_with_the_right_password(daemon_factory):
    # One guess per connection gets past the per-session limit; the
    # per-client limit does not care about connections.
    sub_port, smtps_port = free_port(), free_port()
    d = daemon_factory(start=False, smtp='max_auth_failures_per_client = 3\nauth_failure_delay = "100ms"',
                       extra=submission(sub_port, smtps_port))
    (d.dir / "var").mkdir(parents=True, exist_ok=True)
    add_user(d, "alice@example.test", "alice-secret")
    d.start()
    wait_port(smtps_port)
    ctx = ssl.create_default_context(cafile=str(CA))

    def attempt(password):
        with smtplib.SMTP_SSL("127.0.0.1", smtps_port, context=ctx, timeout=20) as s:
            s.ehlo("client.test")
            cred = base64.b64encode(b"\0alice@example.test\0" + password).decode()
            return s.docmd("AUTH", "PLAIN " + cred)

    for _ in range(3):
        assert attempt(b"wrong")[0] == 535
    code, resp = attempt(b"alice-secret")
    assert code == 454 and resp.startswith(b"4.7.0"), (code, resp)
    d.wait_log("AUTH PLAIN refused: 3 recent failures from this client")


def test_plugin_sees_auth_user_and_tls(daemon_factory):
    """permit_sasl_authenticated in a plugin: the access plugin lets
    authenticated users through and rejects the same sender otherwise."""
    sub_port, smtps_port = free_port(), free_port()
    chain = f"""
[[plugin]]
name = "access"
path = "{plugin_path('access')}"

[[chain.rcpt]]
plugin = "access"
name = "permit-authenticated"
config.authenticated = "OK"

[[chain.rcpt]]
plugin = "access"
name = "no-local-senders-from-outside"
config.sender = {{ "example.test" = "REJECT Authentication required for local senders" }}
"""
    d = daemon_factory(start=False, extra=submission(sub_port, smtps_port) + chain)
    (d.dir / "var").mkdir(parents=True, exist_ok=True)
    add_user(d, "alice@example.test", "alice-secret")
    d.start()
    wait_port(sub_port)
    rc, out = swaks_auth(sub_port, "PLAIN", "alice@example.test", "alice-secret", to="bob@example.test")
    assert rc == 0, out
    with d.smtp() as s:
        s.ehlo("client.test")
        s.mail("alice@example.test")
        code, resp = s.rcpt("bob@example.test")
        assert code == 554 and b"Authentication required for local senders" in resp


def backend_submission(daemon_factory, kind, socket, smtp="", extra=""):
    """A daemon whose submission listeners use one [[auth]] backend of
    `kind` ("dovecot" or "saslauthd") at `socket`; returns it with
    `sub_port` and `smtps_port` set, once it listens."""
    sub_port, smtps_port = free_port(), free_port()
    address = f"unix:{socket}" if kind == "dovecot" else socket
    backends = f"""
[[auth]]
name = "{kind}"
backend = "{kind}"
socket = "{address}"
"""
    d = daemon_factory(smtp=smtp, extra=submission(sub_port, smtps_port, backend=kind, backends=backends) + extra)
    wait_port(sub_port)
    d.sub_port, d.smtps_port = sub_port, smtps_port
    return d


@pytest.fixture
def dovecot_sub(daemon_factory):
    if not DOVECOT_SOCKET.exists():
        pytest.fail(f"the dovecot peer is not running ({DOVECOT_SOCKET} missing): ../shared/peers/start.sh dovecot")
    return backend_submission(daemon_factory, "dovecot", DOVECOT_SOCKET)


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN", "CRAM-MD5"])
def test_dovecot_auth_shares_the_imap_password_store(dovecot_sub, mech):
    rc, out = swaks_auth(dovecot_sub.sub_port, mech, "bob@example.test", "bobpass", to="someone@dest.test")
    assert rc == 0, out
    assert "235 2.7.0" in out
    dovecot_sub.wait_log(f"AUTH {mech} ok, sasl_username=bob@example.test")


def test_dovecot_scram_and_wrong_password(dovecot_sub):
    p = subprocess.run(["python3", str(SCRAM_CLIENT), "127.0.0.1", str(dovecot_sub.sub_port), "alice@mx.test",
                        "alicepass", "SCRAM-SHA-256", "--cafile", str(CA)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    rc, out = swaks_auth(dovecot_sub.sub_port, "PLAIN", "bob@example.test", "wrong", to="someone@dest.test")
    assert "535 5.7.8" in out


SASLAUTHD_DIR = PEERS_RUN / "saslauthd-test"


@pytest.fixture(scope="module")
def saslauthd():
    """A real saslauthd (sasl2-bin) checking a throwaway system user."""
    if shutil.which("saslauthd") is None:
        pytest.fail("saslauthd is not installed (apt-get install sasl2-bin; tests/run.sh does this)")
    SASLAUTHD_DIR.mkdir(parents=True, exist_ok=True)
    user, password = "posternsasl", "sasl-secret-1"
    if subprocess.run(["id", user], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", user], check=True)
    subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True)
    # Its own session: on SIGTERM saslauthd signals its whole process group.
    proc = subprocess.Popen(["saslauthd", "-a", "shadow", "-m", str(SASLAUTHD_DIR), "-n", "1", "-d"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    sock = SASLAUTHD_DIR / "mux"
    for _ in range(100):
        if sock.exists():
            break
        time.sleep(0.05)
    yield sock, user, password
    proc.terminate()
    proc.wait(5)


def test_saslauthd_backend(daemon_factory, saslauthd):
    sock, user, password = saslauthd
    d = backend_submission(daemon_factory, "saslauthd", sock, extra=f'\n[sender_logins]\n{user} = ["@example.test"]\n')
    sub_port = d.sub_port
    for mech in ["PLAIN", "LOGIN"]:
        rc, out = swaks_auth(sub_port, mech, user, password, sender="anyone@example.test", to="x@dest.test")
        assert rc == 0, out
    rc, out = swaks_auth(sub_port, "PLAIN", user, "wrong", sender="anyone@example.test")
    assert "535 5.7.8" in out
    with smtplib.SMTP("127.0.0.1", sub_port, timeout=10) as s:
        s.starttls(context=ssl.create_default_context(cafile=str(CA)))
        s.ehlo("client.test")
        assert "CRAM-MD5" not in s.esmtp_features["auth"]


def test_saslauthd_identity_keeps_its_domain(daemon_factory, saslauthd):
    # saslauthd's shadow mechanism ignores the realm: the unix account logs
    # in as "user" and as "user@other.test" alike. Those are two
    # identities, never one: what [sender_logins] grants "user" is not
    # granted to "user@other.test" (a customer of another domain), which
    # owns only its own address.
    sock, user, password = saslauthd
    d = backend_submission(daemon_factory, "saslauthd", sock, extra=f'\n[sender_logins]\n{user} = ["@example.test"]\n')
    sub_port = d.sub_port
    rc, out = swaks_auth(sub_port, "PLAIN", user, password, sender="anyone@example.test", to="x@dest.test")
    assert rc == 0, out
    other = f"{user}@other.test"
    rc, out = swaks_auth(sub_port, "PLAIN", other, password, sender="anyone@example.test", to="x@dest.test")
    assert "235 2.7.0" in out and "553 5.7.1" in out, out
    assert f"not owned by user {other}" in out, out
    d.wait_log(f"AUTH PLAIN ok, sasl_username={other}")
    rc, out = swaks_auth(sub_port, "LOGIN", other, password, sender=f"{user}+x@other.test", to="x@dest.test")
    assert rc == 0, out
