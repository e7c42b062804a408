"""The SMTP client: mail for other domains leaves by MX (the peers kit's
DNS: dest.test MX 10 mx1 (127.0.0.10), MX 20 mx2 (127.0.0.11); nomx.test A
127.0.0.12; nullmx.test MX 0 .), with STARTTLS, per-recipient outcomes,
bounces and loops stopped. The receiving servers listen on loopback
addresses at a free port, given to the client as `smtp_client.port`: a
second Postern daemon (a real SMTP server, with TLS) or a scripted server
for replies no real server gives on demand."""

import os
import re
import socket
import socketserver
import ssl
import subprocess
import threading
import time

import pytest

from conftest import BASE_CONFIG, NO_REMOTE, PEERS_RUN, message
from test_queue_records import report_for, wait_queue

CA = PEERS_RUN / "tls" / "ca.crt"
CA_KEY = PEERS_RUN / "tls" / "ca.key"
PEER_CERT = PEERS_RUN / "tls" / "server-chain.crt"
PEER_KEY = PEERS_RUN / "tls" / "server.key"


def port_free_on(*hosts):
    """A port free on every one of `hosts`."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        ok = True
        for h in hosts[1:]:
            try:
                with socket.socket() as t:
                    t.bind((h, port))
            except OSError:
                ok = False
        if ok:
            return port
    raise RuntimeError("no common free port")


def mx_port(*hosts):
    """Port 25, where MX hosts listen, when we may bind it (root) and it
    is free on every one of `hosts`; else any common free port."""
    if os.geteuid() == 0:
        try:
            for h in hosts:
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((h, 25))
            return 25
        except OSError:
            pass
    return port_free_on(*hosts)


def client_config(port, more=""):
    """The body of `[smtp_client]`."""
    return f"port = {port}\n{more}"


class Scripted(socketserver.StreamRequestHandler):
    """An SMTP server whose replies depend on the recipient: bad@ is
    refused (550 5.1.1), tmp@ deferred (451 4.2.0), anyone else accepted.
    Its EHLO offers what `server.offer` lists; STARTTLS with the peers
    kit's certificate (or `server.cert`), AUTH PLAIN checked against
    `server.password`. Each session's lines go in `server.sessions`."""

    def reply(self, line):
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self):
        seen = []
        self.server.sessions.append(seen)
        self.reply("220 scripted.test ESMTP")
        tls = False
        while True:
            raw = self.rfile.readline()
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip("\r\n")
            seen.append(line)
            verb = line.split(" ")[0].split(":")[0].upper()
            if verb == "EHLO":
                offer = [o for o in self.server.offer if not (tls and o == "STARTTLS")]
                lines = ["scripted.test"] + offer
                self.reply("\r\n".join(f"250-{l}" for l in lines[:-1]) + ("\r\n" if len(lines) > 1 else "")
                           + f"250 {lines[-1]}")
            elif verb == "STARTTLS" and "STARTTLS" in self.server.offer:
                self.reply("220 2.0.0 Ready to start TLS")
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(*self.server.cert)
                try:
                    conn = ctx.wrap_socket(self.request, server_side=True)
                except (ssl.SSLError, OSError) as e:
                    seen.append(f"TLS FAILED {e}")
                    return
                self.request = conn
                self.rfile = conn.makefile("rb")
                self.wfile = conn.makefile("wb")
                tls = True
                seen.append("TLS ON")
            elif verb == "AUTH":
                import base64
                token = line.split(" ")[2] if len(line.split(" ")) > 2 else ""
                _, user, password = base64.b64decode(token).decode().split("\0")
                seen.append(f"AUTH as {user} tls={tls}")
                if password == self.server.password:
                    self.reply("235 2.7.0 Authentication successful")
                else:
                    self.reply("535 5.7.8 Error: authentication failed")
            elif verb == "MAIL":
                self.reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                addr = line.split("<", 1)[1].split(">", 1)[0]
                if addr.startswith("bad@"):
                    self.reply(f"550 5.1.1 <{addr}>: Recipient address rejected: User unknown")
                elif addr.startswith("tmp@") and not self.server.tmp_ok:
                    self.reply(f"451 4.2.0 <{addr}>: try again later")
                else:
                    self.reply("250 2.1.5 Ok")
            elif verb == "DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                while True:
                    data = self.rfile.readline()
                    seen.append(data.decode(errors="replace").rstrip("\r\n"))
                    if data in (b".\r\n", b""):
                        break
                # Received: before the reply is sent (a real server has
                # the message once it is durable, whether or not the
                # client is still there to read the 250).
                self.server.received.append("\n".join(seen))
                if self.server.slow.is_set():
                    time.sleep(3)
                self.reply("250 2.0.0 Ok: queued as SCRIPTED1")
            elif verb == "RSET":
                self.reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("502 5.5.2 Error: command not recognized")


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


@pytest.fixture
def scripted():
    """Starts scripted servers: `start(host, port, offer=[...])`."""
    servers = []

    def start(host, port, offer=("PIPELINING", "SIZE 10240000", "8BITMIME", "DSN"),
              cert=(str(PEER_CERT), str(PEER_KEY)), password="secret"):
        server = Server((host, port), Scripted)
        server.sessions, server.offer, server.cert, server.password = [], list(offer), cert, password
        server.tmp_ok, server.slow, server.received = False, threading.Event(), []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def sender(daemon_factory, port, more="", name="d"):
    return daemon_factory(name=name, client=client_config(port, more))


def relay_re(host, ip, port):
    return re.escape(f"{host}[{ip}]:{port}")


def test_a_real_mx_takes_the_mail_over_starttls(daemon_factory):
    """Postern to Postern: the receiver is the best MX of dest.test (it
    listens on every address, so 127.0.0.10 reaches it) and offers
    STARTTLS; the message arrives encrypted, with its trace fields."""
    receiver_cfg = (BASE_CONFIG.replace('address = "127.0.0.1:{port}"', 'address = "0.0.0.0:{port}"')
                    .replace('domains = ["example.test"]', 'domains = ["dest.test"]')
                    .replace('hostname = "mx.example.test"', 'hostname = "mx1.dest.test"'))
    tls = f'\n[tls]\ncertificate = "{PEER_CERT}"\nkey = "{PEER_KEY}"\n'
    receiver = daemon_factory(name="mx", config=receiver_cfg, extra=tls)
    port = receiver.port
    d = sender(daemon_factory, port)
    with d.smtp() as s:
        s.sendmail("alice@example.test", ["bob@dest.test"], message(subject="over the wire"))
    relay = relay_re("mx1.dest.test", "127.0.0.10", port)
    m = d.wait_log_re(
        rf"(\w+): to=<bob@dest.test>, orig_to=<bob@dest.test>, relay={relay}, delay=[0-9.]+, "
        rf"dsn=2\.0\.0, status=sent \(250 2\.0\.0 Ok: queued as (\w+)\)")
    d.wait_log_re(rf"{m.group(1)}: Untrusted TLS connection established to {relay}: TLSv1\.3 with cipher")
    [f] = receiver.wait_mail("bob")
    text = f.read_text()
    assert "Subject: over the wire" in text
    # Our Received: went along, and the receiver's says the hop used TLS.
    assert "by mx.example.test" in text and "with ESMTPS" in text
    wait_queue(d, lambda e: e == [])
    d.wait_log_re(rf"{m.group(1)}: removed")


def test_mx_fallback_and_one_outcome_per_recipient(daemon_factory, scripted):
    """mx1 does not answer; mx2 takes the transaction: one MAIL with SIZE,
    the DSN request passed on, each recipient's own reply honoured; the
    refused one is returned to its sender, the deferred one waits."""
    port = mx_port("127.0.0.10", "127.0.0.11")
    mx2 = scripted("127.0.0.11", port)
    d = sender(daemon_factory, port)
    with d.smtp() as s:
        s.ehlo("client.test")
        assert s.docmd("MAIL FROM:<alice@example.test> RET=HDRS ENVID=E1")[0] == 250
        for r in ("good", "bad", "tmp"):
            assert s.docmd(f"RCPT TO:<{r}@dest.test> NOTIFY=FAILURE,DELAY")[0] == 250
        assert s.data(message(subject="three"))[0] == 250
    mx1 = relay_re("mx1.dest.test", "127.0.0.10", port)
    mx2r = relay_re("mx2.dest.test", "127.0.0.11", port)
    d.wait_log_re(rf"connect to {mx1}: .*refused")
    d.wait_log_re(rf"to=<good@dest.test>, orig_to=<good@dest.test>, relay={mx2r}, delay=[0-9.]+, "
                  rf"dsn=2\.0\.0, status=sent \(250 2\.0\.0 Ok: queued as SCRIPTED1\)")
    d.wait_log_re(rf"to=<bad@dest.test>, orig_to=<bad@dest.test>, relay={mx2r}, delay=[0-9.]+, dsn=5\.1\.1, "
                  rf"status=bounced \(host {mx2r} said: 550 5\.1\.1 <bad@dest.test>: Recipient address "
                  rf"rejected: User unknown \(in reply to RCPT TO command\)\)")
    d.wait_log_re(rf"to=<tmp@dest.test>, orig_to=<tmp@dest.test>, relay={mx2r}, delay=[0-9.]+, dsn=4\.2\.0, "
                  rf"status=deferred \(host {mx2r} said: 451 4\.2\.0")
    first = mx2.sessions[0]
    assert first[0] == "EHLO mx.example.test"
    mail = [l for l in first if l.startswith("MAIL")]
    assert len(mail) == 1 and re.fullmatch(r"MAIL FROM:<alice@example.test> SIZE=\d+ RET=HDRS ENVID=E1", mail[0]), mail
    rcpts = [l for l in first if l.startswith("RCPT")]
    assert rcpts == [f"RCPT TO:<{r}@dest.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;{r}@dest.test"
                     for r in ("good", "bad", "tmp")]
    assert any(l.startswith("Received: from client.test") for l in first)
    report = report_for(d, "alice")
    assert "Final-Recipient: rfc822; bad@dest.test" in report and "Status: 5.1.1" in report
    assert "Remote-MTA: dns; mx2.dest.test" in report
    [entry] = wait_queue(d, lambda e: len(e) == 1 and len(e[0]["recipients"]) == 1)
    assert entry["recipients"][0]["address"] == "tmp@dest.test"
    # The server takes it now: a flush sends only what is pending.
    mx2.tmp_ok = True
    d.cli("queue", "flush")
    d.wait_log_re(rf"to=<tmp@dest.test>, orig_to=<tmp@dest.test>, relay={mx2r}, delay=[0-9.]+, dsn=2\.0\.0, status=sent")
    wait_queue(d, lambda e: e == [])
    rcpts_sent = [l for s in mx2.sessions for l in s if l.startswith("RCPT")]
    assert rcpts_sent.count("RCPT TO:<good@dest.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;good@dest.test") == 1


def test_implicit_mx_null_mx_and_unknown_domains(daemon_factory, scripted):
    port = mx_port("127.0.0.12")
    host = scripted("127.0.0.12", port, offer=["8BITMIME"])
    d = sender(daemon_factory, port)
    with d.smtp() as s:
        s.sendmail("alice@example.test", ["x@nomx.test", "y@nullmx.test", "z@nowhere.test"], message())
    d.wait_log_re(rf"to=<x@nomx.test>, .*relay={relay_re('nomx.test', '127.0.0.12', port)}, .*status=sent")
    d.wait_log_re(r"to=<y@nullmx.test>, orig_to=<y@nullmx.test>, relay=none, delay=[0-9.]+, dsn=5\.1\.10, "
                  r"status=bounced \(Domain nullmx.test does not accept mail \(nullMX\)\)")
    d.wait_log_re(r"to=<z@nowhere.test>, orig_to=<z@nowhere.test>, relay=none, delay=[0-9.]+, dsn=5\.4\.4, "
                  r"status=bounced \(Host or domain name not found. Name service error for name=nowhere.test "
                  r"type=MX: Host not found\)")
    # Without PIPELINING, one command at a time; without SIZE or DSN,
    # no such parameters.
    lines = host.sessions[0]
    assert "MAIL FROM:<alice@example.test>" in lines and "RCPT TO:<x@nomx.test>" in lines
    report = report_for(d, "alice")
    assert "Status: 5.1.10" in report and "Status: 5.4.4" in report
    wait_queue(d, lambda e: e == [])


def test_an_mx_that_is_ourselves_is_a_loop_5_4_6(daemon_factory):
    """spf-fail.test's MX is mx.example.test (127.0.0.1): with the client's
    port set to the daemon's own, its best MX is itself."""
    d = daemon_factory(start=False)
    d.config_text = d.config_text.replace(f"[smtp_client]\n{NO_REMOTE}", f"[smtp_client]\nport = {d.port}")
    assert f"port = {d.port}" in d.config_text
    d.config.write_text(d.config_text)
    d.start()
    with d.smtp() as s:
        s.sendmail("alice@example.test", ["x@spf-fail.test"], message())
    d.wait_log_re(r"to=<x@spf-fail.test>, orig_to=<x@spf-fail.test>, relay=none, delay=[0-9.]+, dsn=5\.4\.6, "
                  r"status=bounced \(mail for spf-fail.test loops back to myself\)")
    assert "Status: 5.4.6" in report_for(d, "alice")


def test_tls_required_and_not_offered_defers_4_7_4(daemon_factory, scripted):
    port = mx_port("127.0.0.10", "127.0.0.11")
    mx1 = scripted("127.0.0.10", port)
    scripted("127.0.0.11", port)
    d = sender(daemon_factory, port, more='[smtp_client.tls_policy]\n"dest.test" = "encrypt"\n')
    with d.smtp() as s:
        s.sendmail("alice@example.test", ["far@dest.test"], message())
    mx2r = relay_re("mx2.dest.test", "127.0.0.11", port)
    d.wait_log_re(rf"to=<far@dest.test>, orig_to=<far@dest.test>, relay={mx2r}, delay=[0-9.]+, dsn=4\.7\.4, "
                  rf"status=deferred \(TLS is required, but was not offered by host {mx2r}\)")
    # Nothing of the message went in the clear.
    assert not any(l.startswith("MAIL") for s in mx1.sessions for l in s)


def signed_cert(tmp_path, name):
    """A certificate for `name` from the peers kit's CA."""
    key, csr, crt = tmp_path / f"{name}.key", tmp_path / f"{name}.csr", tmp_path / f"{name}.crt"
    ext = tmp_path / f"{name}.ext"
    ext.write_text(f"subjectAltName=DNS:{name}\n")
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}"], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(CA), "-CAkey", str(CA_KEY),
                    "-CAcreateserial", "-CAserial", str(tmp_path / "ca.srl"), "-out", str(crt), "-days", "2",
                    "-extfile", str(ext)], check=True, capture_output=True)
    return str(crt), str(key)


def test_verify_checks_the_certificate_name_and_chain(daemon_factory, scripted, tmp_path):
    """`verify`: mx1's certificate is for another name (refused, next MX);
    mx2's is from the trusted CA for its name: Verified."""
    port = mx_port("127.0.0.10", "127.0.0.11")
    mx1 = scripted("127.0.0.10", port, offer=["STARTTLS", "PIPELINING"], cert=signed_cert(tmp_path, "other.test"))
    mx2 = scripted("127.0.0.11", port, offer=["STARTTLS", "PIPELINING"], cert=signed_cert(tmp_path, "mx2.dest.test"))
    d = sender(daemon_factory, port, more=f'tls = "verify"\ntls_ca_file = "{CA}"\n')
    with d.smtp() as s:
        s.sendmail("alice@example.test", ["far@dest.test"], message())
    mx1r = relay_re("mx1.dest.test", "127.0.0.10", port)
    mx2r = relay_re("mx2.dest.test", "127.0.0.11", port)
    d.wait_log_re(rf"TLS handshake with {mx1r} failed")
    m = d.wait_log_re(rf"(\w+): to=<far@dest.test>, .*relay={mx2r}, .*status=sent")
    d.wait_log_re(rf"{m.group(1)}: Verified TLS connection established to {mx2r}")
    assert not any(l.startswith("MAIL") for s in mx1.sessions for l in s)
    assert "TLS ON" in mx2.sessions[0]


def test_opportunistic_tls_falls_back_to_plain_text_after_a_failed_handshake(daemon_factory, scripted, tmp_path):
    port = mx_port("127.0.0.10")
    broken = tmp_path / "broken.pem"
    broken.write_text("not a certificate")
    mx1 = scripted("127.0.0.10", port, offer=["STARTTLS"], cert=(str(broken), str(broken)))
    d = sender(daemon_factory, port)
    with d.smtp() as s:
        s.sendmail("alice@example.test", ["far@dest.test"], message())
    d.wait_log_re(r"trying again without TLS")
    d.wait_log_re(r"to=<far@dest.test>, .*status=sent")
    assert len(mx1.sessions) == 2
    assert not any(l == "STARTTLS" for l in mx1.sessions[1])


def test_relayhost_with_auth_only_over_tls(daemon_factory, scripted, tmp_path):
    """Every remote domain goes to the relay host, which gets the
    password only after STARTTLS; a wrong password defers (4.7.0)."""
    port = mx_port("127.0.0.10")
    relay = scripted("127.0.0.10", port, offer=["STARTTLS", "AUTH PLAIN LOGIN", "PIPELINING"])
    pw = tmp_path / "relay.password"
    pw.write_text("secret\n")
    more = (f'relayhost = "[127.0.0.10]:{port}"\nauth_username = "postern"\n'
            f'auth_password_file = "{pw}"\n')
    d = sender(daemon_factory, port, more=more)
    with d.smtp() as s:
        s.sendmail("alice@example.test", ["someone@elsewhere.test"], message())
    r = re.escape(f"127.0.0.10[127.0.0.10]:{port}")
    d.wait_log_re(rf"to=<someone@elsewhere.test>, .*relay={r}, .*status=sent")
    lines = relay.sessions[0]
    assert "AUTH as postern tls=True" in lines
    assert lines.index("TLS ON") < lines.index("AUTH as postern tls=True")
    # A wrong password: deferred, the reason logged.
    pw.write_text("wrong\n")
    d.cli("reload")
    with d.smtp() as s:
        s.sendmail("alice@example.test", ["other@elsewhere.test"], message())
    d.wait_log_re(rf"to=<other@elsewhere.test>, .*relay={r}, .*dsn=4\.7\.0, status=deferred \(SASL authentication "
                  rf"failed; server {r} said: 535 5\.7\.8")


def test_success_reports_relayed_or_left_to_a_dsn_server(daemon_factory, scripted):
    """NOTIFY=SUCCESS: a server without DSN means we report `relayed`; one
    with DSN gets the request and reports itself (nothing from us)."""
    port = mx_port("127.0.0.12", "127.0.0.10", "127.0.0.11")
    scripted("127.0.0.12", port, offer=["PIPELINING"])
    mx1 = scripted("127.0.0.10", port, offer=["PIPELINING", "DSN"])
    d = sender(daemon_factory, port)
    with d.smtp() as s:
        s.ehlo("client.test")
        assert s.docmd("MAIL FROM:<alice@example.test>")[0] == 250
        assert s.docmd("RCPT TO:<x@nomx.test> NOTIFY=SUCCESS")[0] == 250
        assert s.docmd("RCPT TO:<y@dest.test> NOTIFY=SUCCESS")[0] == 250
        assert s.data(message())[0] == 250
    report = report_for(d, "alice")
    assert "Final-Recipient: rfc822; x@nomx.test" in report and "Action: relayed" in report
    assert "y@dest.test" not in report.split("message/delivery-status")[-1].split("text/rfc822-headers")[0]
    assert "RCPT TO:<y@dest.test> NOTIFY=SUCCESS ORCPT=rfc822;y@dest.test" in mx1.sessions[0]
    time.sleep(1)
    assert len([f for f in d.new_mail("alice") if "multipart/report" in f.read_text()]) == 1


def test_the_next_message_reuses_the_connection(daemon_factory, scripted):
    port = mx_port("127.0.0.10")
    mx1 = scripted("127.0.0.10", port)
    d = sender(daemon_factory, port)
    for i in range(2):
        with d.smtp() as s:
            s.sendmail("alice@example.test", [f"r{i}@dest.test"], message(subject=f"m{i}"))
        d.wait_log_re(rf"to=<r{i}@dest.test>, .*status=sent")
    assert len(mx1.sessions) == 1, "\n---\n".join("\n".join(s) for s in mx1.sessions)
    lines = mx1.sessions[0]
    assert [l for l in lines if l.startswith(("MAIL", "RSET"))] == [
        l for l in lines if l.startswith(("MAIL", "RSET"))][:1] + ["RSET"] + [
        l for l in lines if l.startswith("MAIL")][1:]
    assert sum(l.startswith("MAIL") for l in lines) == 2


def test_kill_9_during_remote_delivery_loses_nothing(daemon_factory, scripted):
    """The server is slow to answer after the data; the daemon is killed
    while messages are in flight and queued; after a restart every
    accepted message reaches the server (one in flight may arrive twice,
    as with any MTA: never none)."""
    port = mx_port("127.0.0.10")
    mx1 = scripted("127.0.0.10", port)
    mx1.slow.set()
    d = sender(daemon_factory, port)
    subjects = [f"crash {i}" for i in range(6)]
    for subject in subjects:
        with d.smtp() as s:
            assert s.sendmail("alice@example.test", ["far@dest.test"], message(subject=subject)) == {}
    deadline = time.time() + 10
    while not mx1.received and time.time() < deadline:
        time.sleep(0.05)
    assert mx1.received, "nothing reached the server"
    d.kill9()
    mx1.slow.clear()
    d.start()
    deadline = time.time() + 20
    got = lambda: {s for s in subjects if any(f"Subject: {s}" in m for m in mx1.received)}
    while got() != set(subjects) and time.time() < deadline:
        time.sleep(0.1)
    assert got() == set(subjects), (got(), d.log_text()[-3000:])
    wait_queue(d, lambda e: e == [], timeout=20)


def test_kill_9_while_relaying_from_the_journal_loses_nothing_resends_only_in_flight(
        daemon_factory, scripted):
    """Relayed mail is durable in the journal before 250 and leaves from
    memory, with no queue file; what the server took is marked delivered
    in the journal. Killed with messages delivered, in flight and waiting
    in one journal segment (sealed only after an hour), the next start
    sends again only what the server had not answered: every message
    arrives, none of those answered before the kill twice."""
    port = mx_port("127.0.0.10")
    mx1 = scripted("127.0.0.10", port)
    d = daemon_factory(start=False, client=client_config(port))
    d.add_queue_setting('journal_seal_idle = "1h"')
    d.start()
    before = [f"before {i}" for i in range(5)]
    with d.smtp() as s:
        for subject in before:
            assert s.sendmail("alice@example.test", ["far@dest.test"], message(subject=subject)) == {}
    # A session's lines hold every message it carried, each once.
    count = lambda subject: sum(f"Subject: {subject}" in sess for sess in list(mx1.sessions))
    deadline = time.time() + 10
    while any(count(s) == 0 for s in before) and time.time() < deadline:
        time.sleep(0.05)
    while d.log_text().count(": removed") < len(before) and time.time() < deadline:
        time.sleep(0.05)
    # Delivered from memory: no queue file was ever written for them.
    assert d.queue_files() == []
    mx1.slow.set()
    crash = [f"crash {i}" for i in range(8)]
    with d.smtp() as s:
        for subject in crash:
            assert s.sendmail("alice@example.test", ["far@dest.test"], message(subject=subject)) == {}
    deadline = time.time() + 10
    while not any(count(s) for s in crash) and time.time() < deadline:
        time.sleep(0.05)
    in_flight = sum(count(s) for s in crash)
    assert in_flight, "nothing reached the server"
    d.kill9()
    mx1.slow.clear()
    d.start()
    deadline = time.time() + 30
    while any(count(s) == 0 for s in crash) and time.time() < deadline:
        time.sleep(0.1)
    missing = [s for s in crash if count(s) == 0]
    assert not missing, (missing, d.log_text()[-3000:])
    # Marked delivered before the kill: not sent again.
    assert [count(s) for s in before] == [1] * len(before), d.log_text()[-3000:]
    # Sent twice at most: those the server had not answered at the kill.
    assert sum(count(s) for s in crash) - len(crash) <= in_flight
    marked = re.search(r"journal: (\d+) messages left by an earlier run were delivered or queued already",
                       d.log_text())
    assert marked and int(marked[1]) >= len(before), d.log_text()[-3000:]
    wait_queue(d, lambda e: e == [], timeout=20)
