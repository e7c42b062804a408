"""TLS end to end: STARTTLS and implicit TLS with real clients (swaks,
openssl s_client, Python ssl, testssl.sh)."""

import json
import re
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from conftest import PEERS_RUN, free_port, message, plugin_path, swaks, wait_port

CA = PEERS_RUN / "tls" / "ca.crt"
CERT = PEERS_RUN / "tls" / "server-chain.crt"
KEY = PEERS_RUN / "tls" / "server.key"


def tls_config(cert=CERT, key=KEY, extra=""):
    return f"""
[tls]
certificate = "{cert}"
key = "{key}"
reload_interval = "1s"
{extra}
"""


def implicit_listener(port, tls="implicit"):
    return f"""
[[listener]]
name = "smtps"
address = "127.0.0.1:{port}"
tls = "{tls}"
"""


def make_cert(tmp_path, cn):
    key, crt = tmp_path / f"{cn}.key", tmp_path / f"{cn}.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", f"/CN={cn}",
                    "-addext", f"subjectAltName=DNS:{cn}"], check=True, capture_output=True)
    return crt, key


def s_client(port, *args, starttls=True, servername=None, data=b"QUIT\r\n"):
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-brief"]
    if starttls:
        cmd += ["-starttls", "smtp"]
    if servername:
        cmd += ["-servername", servername]
    p = subprocess.run(cmd + list(args), input=data, capture_output=True, timeout=20)
    return p.returncode, (p.stdout + p.stderr).decode(errors="replace")


def peer_subject(port, servername=None, starttls=True):
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-showcerts"]
    if starttls:
        cmd += ["-starttls", "smtp"]
    if servername:
        cmd += ["-servername", servername]
    p = subprocess.run(cmd, input=b"QUIT\r\n", capture_output=True, timeout=20)
    m = re.search(r"subject=(.*)", p.stdout.decode(errors="replace"))
    return m.group(1) if m else ""


def test_starttls_with_swaks_and_received_header(daemon_factory):
    d = daemon_factory(extra=tls_config())
    rc, out = swaks("--server", f"127.0.0.1:{d.port}", "--tls", "--tls-verify", "--tls-ca-path", str(CA),
                    "--tls-sni", "mx.test", "--helo", "client.test", "--from", "a@example.org",
                    "--to", "alice@example.test")
    assert rc == 0, out
    assert "TLS started with cipher TLSv1.3" in out
    [f] = d.wait_mail("alice")
    head = f.read_text().split("\r\n\r\n")[0]
    assert re.search(r"\(using TLSv1\.3 with cipher TLS_\w+ \((128|256)/(128|256) bits\)\)", head), head
    assert "with ESMTPS id" in head
    d.wait_log("TLS established: TLSv1.3")


def test_implicit_tls_listener(daemon_factory):
    port = free_port()
    d = daemon_factory(extra=tls_config() + implicit_listener(port))
    wait_port(port)
    rc, out = swaks("--server", f"127.0.0.1:{port}", "--tlsc", "--tls-verify", "--tls-ca-path", str(CA),
                    "--tls-sni", "mx.test", "--helo", "client.test", "--from", "a@example.org",
                    "--to", "bob@example.test")
    assert rc == 0, out
    assert "STARTTLS" not in out.split("TLS started")[1].split("QUIT")[0]
    d.wait_mail("bob")
    # A plaintext client on the implicit port gets nothing but a failed handshake.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"EHLO plain.test\r\n")
        s.settimeout(5)
        try:
            data = s.recv(100)
        except ConnectionResetError:
            data = b""
        assert not data.startswith(b"220")
    d.wait_log("TLS handshake failed")


@pytest.mark.parametrize("old", ["-tls1", "-tls1_1"])
def test_old_tls_versions_refused(daemon_factory, old):
    d = daemon_factory(extra=tls_config())
    rc, out = s_client(d.port, old, "-cipher", "DEFAULT:@SECLEVEL=0")
    assert rc != 0, out
    assert "Protocol  : TLSv1" not in out.replace("TLSv1.2", "").replace("TLSv1.3", "")
    rc, out = s_client(d.port, "-tls1_2")
    assert rc == 0 and "Protocol version: TLSv1.2" in out, out


def test_plaintext_pipelined_after_starttls_is_discarded(daemon_factory):
    d = daemon_factory(extra=tls_config())
    raw = socket.create_connection(("127.0.0.1", d.port), timeout=5)
    f = raw.makefile("rb")
    f.readline()
    raw.sendall(b"EHLO client.test\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    # The classic STARTTLS injection: a command smuggled behind STARTTLS.
    raw.sendall(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
    assert f.readline().startswith(b"220 ")
    ctx = ssl.create_default_context(cafile=str(CA))
    tls = ctx.wrap_socket(raw, server_hostname="mx.test")
    tf = tls.makefile("rb")
    tls.sendall(b"EHLO client.test\r\n")
    first = tf.readline()
    assert first.startswith(b"250-"), first  # the EHLO answer, not a MAIL reply
    while not first.startswith(b"250 "):
        first = tf.readline()
    # The injected MAIL was never executed: this MAIL is not "nested".
    tls.sendall(b"MAIL FROM:<a@example.org>\r\n")
    assert tf.readline().startswith(b"250 2.1.0")
    tls.sendall(b"QUIT\r\n")
    tls.close()
    d.wait_log("discarding 32 bytes pipelined after STARTTLS")


def test_encrypt_requires_starttls_before_mail(daemon_factory):
    port = free_port()
    d = daemon_factory(extra=tls_config() + implicit_listener(port, tls="encrypt"))
    wait_port(port)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nQUIT\r\n")
        lines = [f.readline() for _ in range(12)]
    assert any(l.startswith(b"530 5.7.0 Must issue a STARTTLS command first") for l in lines), lines
    rc, out = swaks("--server", f"127.0.0.1:{port}", "--tls", "--helo", "client.test",
                    "--from", "a@example.org", "--to", "alice@example.test")
    assert rc == 0, out


def test_tls_none_offers_no_starttls(daemon_factory):
    port = free_port()
    d = daemon_factory(extra=tls_config() + implicit_listener(port, tls="none"))
    wait_port(port)
    with d.smtp() as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls")
    import smtplib
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
        s.ehlo("client.test")
        assert not s.has_extn("starttls")
        assert s.docmd("STARTTLS")[0] == 502


def test_sni_selects_certificate(daemon_factory, tmp_path):
    crt, key = make_cert(tmp_path, "other.test")
    extra = tls_config(extra=f"""
[[tls.sni]]
names = ["other.test"]
certificate = "{crt}"
key = "{key}"
""")
    d = daemon_factory(extra=extra)
    assert "CN = other.test" in peer_subject(d.port, servername="other.test")
    assert "CN = mx.test" in peer_subject(d.port, servername="mx.test")
    assert "CN = mx.test" in peer_subject(d.port)


def test_certificate_reloaded_when_files_change(daemon_factory, tmp_path):
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(CERT, cert)
    shutil.copy(KEY, key)
    d = daemon_factory(extra=tls_config(cert=cert, key=key))
    assert "CN = mx.test" in peer_subject(d.port)
    new_crt, new_key = make_cert(tmp_path, "renewed.test")
    shutil.copy(new_key, key)
    shutil.copy(new_crt, cert)
    d.wait_log("certificate files changed; reloaded", timeout=10)
    assert "CN = renewed.test" in peer_subject(d.port)
    assert d.proc.poll() is None


def test_failed_reload_changes_no_certificate(daemon_factory, tmp_path):
    # A reload is all or nothing: when the new generation fails to build
    # (here a plugin entry's config), its certificates are not used either.
    d = daemon_factory(extra=tls_config())
    new_crt, new_key = make_cert(tmp_path, "next.test")
    broken = f"""
[[plugin]]
name = "access"
path = "{plugin_path('access')}"

[[chain.rcpt]]
plugin = "access"
config.sender = {{ "blocked.test" = "NONSENSE" }}
"""
    d.rewrite(extra=tls_config(cert=new_crt, key=new_key) + broken)
    p = d.cli("reload", check=False)
    assert p.returncode == 1 and "unknown action" in p.stderr, p.stderr
    assert "CN = mx.test" in peer_subject(d.port)
    d.rewrite(extra=tls_config(cert=new_crt, key=new_key))
    d.cli("reload")
    assert "CN = next.test" in peer_subject(d.port)


def test_self_signed_certificate_generated_when_none_configured(daemon):
    assert "CN = mx.example.test" in peer_subject(daemon.port)
    daemon.wait_log("generated a self-signed one for mx.example.test")
    assert (daemon.dir / "var" / "spool" / "tls" / "selfsigned.crt").exists()


def test_testssl_finds_no_weak_protocol_or_cipher(daemon_factory, tmp_path):
    if shutil.which("testssl") is None:
        pytest.fail("testssl is not installed (../shared/peers/install.sh)")
    d = daemon_factory(extra=tls_config())
    out_json = tmp_path / "testssl.json"
    env = {"NXCONNECT": "127.0.0.1:0", "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"}
    p = subprocess.run(["testssl", "--quiet", "--nodns", "none", "--warnings", "off", "--color", "0",
                        "--starttls", "smtp", "-p", "-s", "-f", "--jsonfile", str(out_json),
                        f"127.0.0.1:{d.port}"], capture_output=True, text=True, timeout=600, env=env)
    findings = json.loads(out_json.read_text())
    by_id = {f["id"]: f for f in findings}
    for proto in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"]:
        assert by_id[proto]["finding"].startswith("not offered"), by_id[proto]
    for proto in ["TLS1_2", "TLS1_3"]:
        assert by_id[proto]["finding"].startswith("offered"), by_id[proto]
    weak = [f for f in findings if f["severity"] in ("HIGH", "CRITICAL", "MEDIUM")]
    assert weak == [], weak
    for cat in ["cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
                "cipherlist_3DES_IDEA", "cipherlist_AVERAGE"]:
        assert by_id[cat]["finding"].startswith("not offered"), by_id[cat]
