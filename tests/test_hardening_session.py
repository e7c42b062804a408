"""Hostile clients against the session: writes with deadlines and unsent
replies bounded, sessions with an age and command limit, and a session
that panics contained. Real binary, real sockets."""

import signal
import socket
import threading
import time

from conftest import BASE_CONFIG, message


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
