"""Hostile clients against the session: writes with deadlines and unsent
replies bounded, sessions with an age and command limit, a session that
panics contained, unauthenticated pipelining refused, no session relaying
under a reload's old rules, and AUTH lines that cannot be stretched,
answered after one delay. Real binary, real sockets, swaks and Postfix's
smtp-source."""

import base64
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import BASE_CONFIG, BIN, message, swaks


def connect(port, source="127.0.0.1", rcvbuf=None, timeout=10):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        # A small window: a client that does not read stops the server's
        # writes after kilobytes instead of megabytes.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def read_reply(f):
    """One (possibly multi-line) reply as bytes, b"" at end of input."""
    out = b""
    while True:
        line = f.readline()
        out += line
        if not line or (len(line) >= 4 and line[3:4] == b" "):
            return out


def greeted(port, source="127.0.0.1", **kw):
    """A client that waited for the greeting and for its EHLO's reply:
    (socket, its reader)."""
    s = connect(port, source=source, **kw)
    f = s.makefile("rb")
    assert read_reply(f).startswith(b"220")
    s.sendall(b"EHLO client.test\r\n")
    assert read_reply(f).startswith(b"250")
    return s, f


def read_all(s, quiet=1.0):
    """Everything until the server closes (or says nothing for `quiet` s)."""
    s.settimeout(quiet)
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (socket.timeout, ConnectionResetError):
            return out
        if not chunk:
            return out
        out += chunk


def untrusted(smtp="", extra=""):
    """BASE_CONFIG with no trusted network: every loopback client is an
    ordinary unauthenticated client (local recipients need no relaying)."""
    return dict(config=BASE_CONFIG.replace('trusted_networks = ["127.0.0.1/32"]', "trusted_networks = []"),
                smtp=smtp, extra=extra)


def auth_daemon(daemon_factory, name="auth", smtp="", sender_logins=""):
    """AUTH against a password file on the (loopback) mx listener, no TLS
    needed, nobody trusted; users alice and bob."""
    cfg = untrusted(smtp=smtp,
                    extra='\n[[auth]]\nname = "local"\nbackend = "passwd"\npath = "var/passwd"\n' + sender_logins)
    cfg["config"] = cfg["config"].replace('name = "mx"', 'name = "mx"\nauth = "local"\nauth_only_with_tls = false')
    d = daemon_factory(name=name, start=False, **cfg)
    (d.dir / "var").mkdir(parents=True, exist_ok=True)
    for user, pw in [("alice@example.test", "alice-secret"), ("bob@example.test", "bob-secret")]:
        p = subprocess.run([str(BIN), "user", "--config", str(d.config), "add", user, "--password-stdin"],
                           input=pw + "\n", capture_output=True, text=True, cwd=d.dir)
        assert p.returncode == 0, p.stderr
    d.start()
    return d


# --- 3. Every write has a deadline; unsent replies are bounded --------------

def hog(port, source, stop):
    """A client that greets properly, then pipelines RSETs (allowed after
    EHLO) and never reads another reply."""
    s, _ = greeted(port, source=source, rcvbuf=4096)
    s.settimeout(0.5)

    def blast():
        chunk = b"RSET\r\n" * 2000
        while not stop.is_set():
            try:
                s.sendall(chunk)
            except socket.timeout:
                continue
            except OSError:
                return

    t = threading.Thread(target=blast, daemon=True)
    t.start()
    return s, t


def test_clients_that_never_read_are_cut_and_others_are_served(daemon_factory):
    # Six slots; five never-reading clients from five addresses take five.
    d = daemon_factory(smtp='command_timeout = "2s"\nmax_connections = 6')
    d.wait_log("disconnect from")  # the start-up probe's slot is free again
    stop = threading.Event()
    hogs = [hog(d.port, f"127.0.0.{i}", stop) for i in range(2, 7)]
    try:
        # Meanwhile another client is served at once, a whole transaction.
        with d.smtp(source="127.0.0.7") as c:
            c.ehlo("client.test")
            assert c.sendmail("a@example.org", ["alice@example.test"], message(subject="served")) == {}
        d.wait_mail("alice")
        # Each hog is cut once it stops taking replies (2 s), far before
        # the idle (300 s) or any other timeout.
        for i in range(2, 7):
            d.wait_log_re(rf"timeout after RSET from \S+\[127\.0\.0\.{i}\]: \d+ bytes of replies not taken within 2s",
                          timeout=30)
        for s, _ in hogs:
            # The server closed it: what it had sent drains, then EOF.
            s.settimeout(10)
            while True:
                try:
                    if not s.recv(65536):
                        break
                except ConnectionResetError:
                    break
    finally:
        stop.set()
        for s, t in hogs:
            t.join(5)
            s.close()
    # Every slot is free again: six clients at once are all greeted.
    clients = [connect(d.port, source=f"127.0.0.{i}") for i in range(2, 8)]
    try:
        for c in clients:
            assert c.recv(1024).startswith(b"220 "), "slot not released"
    finally:
        for c in clients:
            c.close()


def test_shutdown_does_not_wait_the_grace_for_clients_that_never_read(daemon_factory):
    # The final 421 has a deadline too: SIGTERM with never-reading clients
    # ends within about command_timeout, not the 30 s grace.
    d = daemon_factory(config=BASE_CONFIG.replace('shutdown_grace = "10s"', 'shutdown_grace = "30s"'),
                       smtp='command_timeout = "2s"')
    stop = threading.Event()
    hogs = [hog(d.port, f"127.0.0.{i}", stop) for i in range(2, 5)]
    try:
        time.sleep(0.5)
        started = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        d.proc.wait(40)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        for s, t in hogs:
            t.join(5)
            s.close()
    assert elapsed < 15, elapsed
    assert "postern stopped" in d.log_text()


# --- 11. Limits a client cannot sidestep: age and commands -----------------

def test_a_session_ends_after_its_command_limit_and_age(daemon_factory):
    d = daemon_factory(smtp="max_session_commands = 5")
    with d.smtp() as s:
        s.ehlo("client.test")
        for _ in range(4):
            assert s.noop()[0] == 250
        code, resp = s.docmd("NOOP")
        assert code == 421 and resp.startswith(b"4.7.0"), (code, resp)
    d.wait_log("reached smtp.max_session_commands (5) after 6 commands")
    d2 = daemon_factory(name="age", smtp='max_session_age = "2s"')
    with d2.smtp() as s:
        s.ehlo("client.test")
        assert s.noop()[0] == 250
        time.sleep(3)
        code, resp = s.docmd("NOOP")
        assert code == 421 and resp.startswith(b"4.7.0"), (code, resp)
    d2.wait_log("reached smtp.max_session_age (2s)")
    # A new session is served as usual.
    with d2.smtp() as s:
        assert s.sendmail("a@example.org", ["alice@example.test"], message(subject="after")) == {}


# --- 1. A session that panics anyway is contained ----------------------------

def test_a_session_that_panics_answers_421_and_the_daemon_goes_on(daemon_factory):
    """U+212A KELVIN SIGN in a +tag panicked the router (issue 19, item 1).
    Whatever the router does with it, the client gets a reply: either the
    recipient's (once the router cannot panic), or, from a panic, 421 4.3.0
    with a BUG line in the log naming the queue ID; never a silent hang-up.
    The containment itself is unit-tested in server/contain.rs."""
    d = daemon_factory()
    s, f = greeted(d.port)
    s.sendall(b"MAIL FROM:<> SMTPUTF8\r\n")
    assert read_reply(f).startswith(b"250")
    s.sendall("RCPT TO:<alice+\u212a@example.test>\r\n".encode())
    reply = read_reply(f)
    s.close()
    assert reply, "connection dropped without a reply"
    if reply.startswith(b"421"):
        assert reply.startswith(b"421 4.3.0"), reply
        d.wait_log_re(r"[0-9A-F]{16}: BUG: session with \S+ panicked after RCPT: ")
    else:
        assert reply[:3] in (b"250", b"550"), reply
    # The daemon and other sessions go on.
    with d.smtp() as c:
        assert c.sendmail("a@example.org", ["bob@example.test"], message(subject="still here")) == {}
    d.wait_mail("bob")


# --- 4. Unauthenticated pipelining abuse is refused --------------------------

def test_published_pipelining_sequence_is_refused(daemon_factory):
    # Mail 1 ends, and MAIL/RCPT/DATA with mail 2 follow without waiting
    # for the 354: what an SMTP smuggling test sends. Mail 1 is accepted
    # (its end may be followed by commands), mail 2 never.
    d = daemon_factory(**untrusted())
    s, f = greeted(d.port, source="127.0.0.2")
    s.sendall(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert read_reply(f).startswith(b"250")
    assert read_reply(f).startswith(b"250")
    assert read_reply(f).startswith(b"354")
    s.sendall(b"Subject: one\r\n\r\nfirst\r\n.\r\n"
              b"MAIL FROM:<b@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
              b"Subject: two\r\n\r\nsecond\r\n.\r\nQUIT\r\n")
    out = read_all(s, quiet=5.0).decode()
    s.close()
    codes = [line[:3] for line in out.split("\r\n") if line]
    assert codes == ["250", "250", "250", "554"], out
    assert "554 5.5.0 Error: SMTP protocol synchronization" in out
    d.wait_log_re(r"reject: improper command pipelining after DATA from \S+\[127\.0\.0\.2\]: "
                  r"\"\[\.\.\.\] \(12 bytes\)\" \(\d+ bytes sent before the reply\); disconnecting")
    [f1] = d.wait_mail("alice")
    assert "Subject: one" in f1.read_text()
    time.sleep(0.5)
    assert d.new_mail("bob") == []


@pytest.mark.parametrize("after, payload", [
    ("CONNECT", None),
    ("EHLO", b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\n"),
    ("HELO", b"HELO client.test\r\n"),
    ("QUIT", b"EHLO client.test\r\n"),
    ("BDAT LAST", b"EHLO client.test\r\n"),
    ("NOOP", b"EHLO client.test\r\n"),
])
def test_what_must_wait_for_its_reply(daemon_factory, after, payload):
    d = daemon_factory(**untrusted())
    if after == "CONNECT":
        # Talking before the greeting: refused instead of greeted. The
        # server looks once, after its PTR lookup; should this client be
        # descheduled between connect and send for that long, it is
        # greeted: try again (unfixed, every attempt is greeted).
        for _ in range(5):
            s = connect(d.port, source="127.0.0.2")
            s.sendall(b"EHLO client.test\r\n")
            out = read_all(s, quiet=5.0)
            s.close()
            if not out.startswith(b"220"):
                break
        assert out.startswith(b"554 5.5.0") and b"220" not in out, out
    else:
        s = connect(d.port, source="127.0.0.2")
        f = s.makefile("rb")
        assert read_reply(f).startswith(b"220")
        s.sendall(payload)
        if after in ("EHLO",):
            out = read_all(s, quiet=5.0)
            assert out.startswith(b"554 5.5.0"), out
        else:
            assert read_reply(f).startswith(b"250")
            follow = {
                # Without EHLO's PIPELINING nothing may be pipelined.
                "HELO": b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\n",
                "QUIT": b"QUIT\r\nNOOP\r\n",
                "BDAT LAST": b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\n"
                             b"BDAT 16 LAST\r\nSubject: x\r\n\r\nx\r\nMAIL FROM:<b@example.org>\r\n",
                "NOOP": b"NOOP\r\nNOOP\r\n",
            }[after]
            s.sendall(follow)
            out = read_all(s, quiet=5.0).decode()
            codes = [line[:3] for line in out.split("\r\n") if line]
            assert codes[-1] == "554" and "554 5.5.0" in out, out
            assert "221" not in codes and "queued as" not in out, out
    s.close()
    # After HELO the MAIL is what the client did not wait for.
    logged = {"HELO": "MAIL", "BDAT LAST": "BDAT LAST"}.get(after, after)
    # 127.0.0.2's PTR (client.example.test, pointing back) comes from the
    # test zone: loopback reverse lookups go to the nameservers.
    d.wait_log(f"improper command pipelining after {logged} from client.example.test[127.0.0.2]")
    assert d.new_mail("alice") == []


def test_trusted_authenticated_and_permitted_clients_may_pipeline(daemon_factory):
    seq = (b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
           b"Subject: piped\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    # A trusted network (BASE_CONFIG trusts 127.0.0.1).
    d = daemon_factory()
    s = connect(d.port)
    s.recv(1024)
    s.sendall(seq)
    assert b"queued as" in read_all(s, quiet=5.0)
    s.close()
    d.wait_mail("alice")
    # A listener that does not forbid it.
    off = untrusted()
    off["config"] = off["config"].replace('name = "mx"', 'name = "mx"\nforbid_unauth_pipelining = false')
    d2 = daemon_factory(name="off", **off)
    s = connect(d2.port, source="127.0.0.2")
    s.recv(1024)
    s.sendall(seq)
    assert b"queued as" in read_all(s, quiet=5.0)
    s.close()
    d2.wait_mail("alice")
    # An authenticated client.
    d3 = auth_daemon(daemon_factory)
    s, f = greeted(d3.port, source="127.0.0.2")
    s.sendall(b"AUTH PLAIN " + base64.b64encode(b"\0alice@example.test\0alice-secret") + b"\r\n")
    assert read_reply(f).startswith(b"235")
    s.sendall(seq.replace(b"EHLO client.test\r\n", b"").replace(b"a@example.org", b"alice@example.test"))
    assert b"queued as" in read_all(s, quiet=5.0)
    s.close()
    d3.wait_mail("alice")


def test_swaks_pipeline_and_smtp_source_are_not_refused(daemon_factory):
    d = daemon_factory(**untrusted())
    rc, out = swaks("--server", f"127.0.0.1:{d.port}", "--local-interface", "127.0.0.2",
                    "--helo", "client.test", "--from", "a@example.org", "--to", "alice@example.test",
                    "--pipeline", "--header", "Subject: swaks pipelined")
    assert rc == 0, out
    replies = [line for line in out.splitlines() if line.startswith(("<-", "<~", "<**", "<~*"))]
    assert "PIPELINING" in out, out
    assert not any(" 554" in line for line in replies), out
    d.wait_mail("alice")
    # smtp-source pipelines MAIL/RCPT/DATA (and its QUIT) when offered.
    p = subprocess.run(["smtp-source", "-s", "2", "-m", "4", "-f", "a@example.org",
                        "-t", "bob@example.test", "-M", "source.test", f"127.0.0.1:{d.port}"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    d.wait_mail("bob", count=4)
    assert "improper command pipelining" not in d.log_text()


# --- 11. No session relays under a reload's old rules ----------------------

def test_a_reload_that_removes_a_trusted_network_stops_relaying_at_the_next_transaction(daemon_factory):
    two = BASE_CONFIG.replace('trusted_networks = ["127.0.0.1/32"]',
                              'trusted_networks = ["127.0.0.1/32", "127.0.0.2/32"]')
    d = daemon_factory(config=two)
    with d.smtp(source="127.0.0.2") as s:
        s.ehlo("client.test")
        assert s.mail("a@example.org")[0] == 250
        assert s.rcpt("someone@dest.test")[0] == 250
        s.rset()
        assert s.mail("a@example.org")[0] == 250
        d.config.write_text(d.config_text.replace('"127.0.0.1/32", "127.0.0.2/32"', '"127.0.0.1/32"'))
        assert "generation 2" in d.cli("reload").stdout
        # The transaction under way keeps the rules it started with ...
        assert s.rcpt("someone@dest.test")[0] == 250
        s.rset()
        # ... the next one runs on the new generation.
        assert s.mail("a@example.org")[0] == 250
        code, resp = s.rcpt("someone@dest.test")
        assert code == 554 and b"Relay access denied" in resp, (code, resp)
    d.wait_log_re(r"\[127\.0\.0\.2\]: session moves from generation 1 to 2")


def test_a_reload_that_changes_sender_logins_applies_at_the_next_transaction(daemon_factory):
    d = auth_daemon(daemon_factory, sender_logins='\n[sender_logins]\n"alice@example.test" = ["boss@example.test"]\n')
    with d.smtp(source="127.0.0.2") as s:
        s.ehlo("client.test")
        s.login("alice@example.test", "alice-secret")
        assert s.mail("boss@example.test")[0] == 250
        s.rset()
        d.config.write_text(d.config_text.replace('"alice@example.test" = ["boss@example.test"]', ""))
        assert "generation 2" in d.cli("reload").stdout
        code, resp = s.docmd("MAIL FROM:<boss@example.test>")
        assert code == 553 and b"not owned by user alice@example.test" in resp, (code, resp)
        assert s.mail("alice@example.test")[0] == 250


def test_a_deleted_user_stops_relaying_at_the_next_transaction(daemon_factory):
    d = auth_daemon(daemon_factory)
    with d.smtp(source="127.0.0.2") as s:
        s.ehlo("client.test")
        s.login("bob@example.test", "bob-secret")
        assert s.mail("bob@example.test")[0] == 250
        assert s.rcpt("friend@dest.test")[0] == 250
        s.rset()
        p = subprocess.run([str(BIN), "user", "--config", str(d.config), "del", "bob@example.test"],
                           capture_output=True, text=True, cwd=d.dir)
        assert p.returncode == 0, p.stderr
        assert s.mail("bob@example.test")[0] == 250
        code, resp = s.rcpt("friend@dest.test")
        assert code == 554 and b"Relay access denied" in resp, (code, resp)
    d.wait_log("authentication of bob@example.test withdrawn: the user no longer exists")


# --- 10. AUTH lines cannot be stretched; success and failure take as long ---

def test_an_auth_answer_trickled_byte_by_byte_is_cut_off(daemon_factory):
    d = auth_daemon(daemon_factory, smtp='command_timeout = "2s"')
    s, f = greeted(d.port, source="127.0.0.2")
    s.sendall(b"AUTH LOGIN\r\n")
    assert read_reply(f).startswith(b"334")
    started = time.monotonic()
    reply = b""
    s.settimeout(0.5)
    try:
        # Each byte well within command_timeout of the last: the line as
        # a whole is not.
        for b in base64.b64encode(b"alice@example.test" * 4):
            s.sendall(bytes([b]))
            try:
                reply += s.recv(1024)
            except socket.timeout:
                pass
            if reply:
                break
            if time.monotonic() - started > 15:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    elapsed = time.monotonic() - started
    s.close()
    assert reply.startswith(b"421 4.4.2"), reply
    assert elapsed < 8, elapsed
    d.wait_log("timeout after AUTH from")


def test_auth_success_and_failure_are_answered_after_the_same_delay(daemon_factory):
    d = auth_daemon(daemon_factory, smtp='auth_failure_delay = "2s"')

    def attempt(password):
        with d.smtp(source="127.0.0.2") as s:
            s.ehlo("client.test")
            cred = base64.b64encode(b"\0alice@example.test\0" + password).decode()
            t0 = time.monotonic()
            code = s.docmd("AUTH", "PLAIN " + cred)[0]
            return code, time.monotonic() - t0

    # One failure makes this client one that failed recently ...
    assert attempt(b"wrong")[0] == 535
    # ... and then a right and a wrong guess take as long as each other.
    ok_code, ok_time = attempt(b"alice-secret")
    bad_code, bad_time = attempt(b"wrong")
    assert (ok_code, bad_code) == (235, 535)
    # Unfixed: 2 s and 4 s (the failure counted itself).
    assert ok_time >= 1.8 and bad_time >= 1.8, (ok_time, bad_time)
    assert abs(ok_time - bad_time) < 1.0, (ok_time, bad_time)
