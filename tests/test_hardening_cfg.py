"""Configuration that cannot hurt, and authentication that never says yes
to a refused account: the real binary refusing to serve as root, refusing
a system directory as its plugin cache, naming each unusable value, a
reload that would turn TLS on, certificate renewals, and Dovecot accounts
that Dovecot itself says are not to log in here."""

import os
import pathlib
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import BASE_CONFIG, wait_port
from test_auth import backend_submission, swaks_auth
from test_plugins import access_plugin
from test_tls import make_cert, peer_subject, tls_config

AS_ROOT = 'run_as_root = true\n'
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="about starting as root")


def wait_exit(d, timeout=20):
    """The daemon's exit code: it must stop by itself (a refused start)."""
    try:
        return d.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"postern kept running:\n{d.log_text()[-3000:]}")


def refused_port(port):
    try:
        wait_port(port, timeout=0.5)
    except TimeoutError:
        return True
    return False


@needs_root
def test_root_without_user_is_refused_unless_run_as_root(daemon_factory):
    config = BASE_CONFIG.replace(AS_ROOT, "")
    assert "run_as_root" not in config
    d = daemon_factory(start=False, config=config)
    d.start(wait=False)
    assert wait_exit(d) != 0
    log = d.log_text()
    assert "started as root without server.user: refusing to serve as root" in log, log
    assert "or [server] run_as_root = true to run as root anyway" in log, log
    assert refused_port(d.port)
    p = d.cli("check", check=False)
    assert p.returncode == 1 and "refusing to serve as root" in p.stderr, p.stderr
    # An account of ID 0 is root too.
    d.config.write_text(d.config_text.replace('shutdown_grace = "10s"', 'shutdown_grace = "10s"\nuser = "root"'))
    p = d.cli("check", check=False)
    assert p.returncode == 1 and 'server.user = "root" is root' in p.stderr, p.stderr
    # Said explicitly, it serves.
    d.config.write_text(d.config_text.replace('shutdown_grace = "10s"', 'shutdown_grace = "10s"\nrun_as_root = true'))
    d.start()
    with d.smtp() as s:
        assert s.ehlo("client.test")[0] == 250


@needs_root
@pytest.mark.parametrize("how", ["system", "link", "working"])
def test_plugin_cache_is_never_a_system_directory(daemon_factory, how):
    # The cache is given to server.user recursively, like the spool: never
    # a system tree, also not through a link, nor the working directory.
    # (/srv: listed as a system directory and empty here, so that a
    # failure of this test costs little.)
    d = daemon_factory(start=False)
    link = d.dir / "cache-link"
    link.symlink_to("/srv")
    cache = {"system": "/srv", "link": str(link), "working": "."}[how]
    before = os.stat("/srv")
    access = access_plugin('{ "blocked.test" = "REJECT" }')
    text = d.config_text.replace('shutdown_grace = "10s"', 'shutdown_grace = "10s"\nuser = "nobody"')
    d.config.write_text(re.sub(r'(?m)^cache_dir = ".*"$', f'cache_dir = "{cache}"', text) + access)
    assert f'cache_dir = "{cache}"' in d.config.read_text()
    p = d.cli("check", check=False)
    assert p.returncode == 1 and f"wasm.cache_dir = {cache}: refusing to give that tree to server.user nobody" \
        in p.stderr, p.stderr
    d.start(wait=False)
    assert wait_exit(d) != 0
    assert f"wasm.cache_dir = {cache}: refusing to give that tree" in d.log_text(), d.log_text()[-2000:]
    after = os.stat("/srv")
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert d.dir.stat().st_uid == 0


# (section, line, key): each makes the service unusable or its arithmetic
# overflow; `postern check` and a start refuse it, naming the key.
BAD = [
    ("smtp", "idle_timeout = 0", "smtp.idle_timeout"),
    ("smtp", "command_timeout = \"0s\"", "smtp.command_timeout"),
    ("smtp", "data_timeout = \"500000000000000000s\"", "smtp.data_timeout"),
    ("smtp", "auth_failure_delay = \"500000000000000000s\"", "smtp.auth_failure_delay"),
    ("smtp", "max_auth_failures_per_client = 0", "smtp.max_auth_failures_per_client"),
    ("smtp", "max_line_length = 9223372036854775807", "smtp.max_line_length"),
    ("tls", "reload_interval = 0", "tls.reload_interval"),
    ("tls", "handshake_timeout = 0", "tls.handshake_timeout"),
]


@pytest.mark.parametrize("section,line,key", BAD, ids=[b[2] for b in BAD])
def test_check_and_start_refuse_unusable_values(daemon_factory, section, line, key):
    d = daemon_factory(start=False, smtp=line if section == "smtp" else "",
                       extra=f"[{section}]\n{line}\n" if section != "smtp" else "")
    p = d.cli("check", check=False)
    assert p.returncode == 1, p.stdout
    assert f"{key}: " in p.stderr, p.stderr
    d.start(wait=False)
    assert wait_exit(d) != 0
    assert f"{key}: " in d.log_text()


def test_sni_certificate_without_names_is_refused(daemon_factory, tmp_path):
    crt, key = make_cert(tmp_path, "other.test")
    d = daemon_factory(start=False, extra=f'[[tls.sni]]\nnames = []\ncertificate = "{crt}"\nkey = "{key}"\n')
    p = d.cli("check", check=False)
    assert p.returncode == 1 and "tls.sni[0].names: lists no server name" in p.stderr, p.stderr


def test_reload_that_turns_tls_on_is_refused(daemon_factory):
    # Started without TLS there is no acceptor: STARTTLS would be offered
    # and every handshake dropped.
    plain = BASE_CONFIG.replace('name = "mx"', 'name = "mx"\ntls = "none"')
    d = daemon_factory(config=plain)
    with d.smtp() as s:
        s.ehlo("client.test")
        assert not s.has_extn("starttls")
    d.config.write_text(d.config_text.replace('tls = "none"', 'tls = "may"'))
    p = d.cli("reload", check=False)
    assert p.returncode == 1, p.stdout
    assert "a listener now uses TLS, but Postern was started without any: a restart is needed" in p.stderr, p.stderr
    # The old generation keeps serving, as it was.
    with d.smtp() as s:
        s.ehlo("client.test")
        assert not s.has_extn("starttls")
        assert s.docmd("STARTTLS")[0] == 502
    # A restart takes it.
    d.stop()
    d.start()
    with d.smtp() as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls")
        s.starttls(context=ssl._create_unverified_context())
        assert s.ehlo("client.test")[0] == 250


def test_certificate_renewed_in_place_keeping_its_mtime_is_reloaded(daemon_factory, tmp_path):
    # `cp -p` or `install -p` keeps the modification time: the files'
    # other stamps (change time, size, inode) still tell the renewal.
    first_crt, first_key = make_cert(tmp_path, "first.test")
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(first_crt, cert)
    shutil.copy(first_key, key)
    d = daemon_factory(extra=tls_config(cert=cert, key=key))
    assert "CN = first.test" in peer_subject(d.port)
    stamps = {p: os.stat(p) for p in (cert, key)}
    new_crt, new_key = make_cert(tmp_path, "renewed.test")
    for src, dst in ((new_key, key), (new_crt, cert)):
        dst.write_bytes(src.read_bytes())
        os.utime(dst, ns=(stamps[dst].st_atime_ns, stamps[dst].st_mtime_ns))
    assert all(os.stat(p).st_mtime_ns == stamps[p].st_mtime_ns for p in (cert, key))
    d.wait_log("certificate files changed; reloaded", timeout=15)
    assert "CN = renewed.test" in peer_subject(d.port)


# A second Dovecot of our own, whose passdb answers what suspends an
# account (nologin) or sends it elsewhere (proxy, referral host=), each
# with the extra fields Dovecot's login processes refuse.
DOVECOT_CONF = """
base_dir = {dir}/run
state_dir = {dir}/state
instance_name = postern-test-{name}
protocols = none
listen = 127.0.0.1
log_path = {dir}/dovecot.log
ssl = no
auth_mechanisms = plain login
disable_plaintext_auth = no
auth_verbose = yes
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={dir}/home/%u allow_all_users=yes
}}
service auth {{
  unix_listener {dir}/auth-client {{
    mode = 0666
  }}
}}
"""

DOVECOT_USERS = """\
normal@mx.test:{PLAIN}normalpass
suspended@mx.test:{PLAIN}suspendedpass::::::nologin reason=suspended-by-admin
proxied@mx.test:::::::nopassword=y proxy=y host=192.0.2.9
referred@mx.test:{PLAIN}referredpass::::::host=192.0.2.10
"""


@pytest.fixture(scope="module")
def refusing_dovecot():
    if shutil.which("dovecot") is None:
        pytest.fail("dovecot is not installed (../shared/peers/install.sh)")
    # Short: unix socket paths under base_dir must stay below 108 bytes.
    d = pathlib.Path(tempfile.mkdtemp(prefix="pdv-", dir="/tmp"))
    d.chmod(0o755)
    (d / "dovecot.conf").write_text(DOVECOT_CONF.format(dir=d, name=d.name))
    (d / "passwd").write_text(DOVECOT_USERS)
    # It goes to the background: no pipes it would keep open.
    subprocess.run(["dovecot", "-c", str(d / "dovecot.conf")], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    sock = d / "auth-client"
    deadline = time.time() + 10
    while not sock.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert sock.exists(), (d / "dovecot.log").read_text(errors="replace")
    yield sock
    pid = (d / "run" / "master.pid").read_text().strip()
    subprocess.run(["kill", pid], check=False)
    deadline = time.time() + 10
    while pathlib.Path(f"/proc/{pid}").exists() and time.time() < deadline:
        time.sleep(0.05)
    shutil.rmtree(d, ignore_errors=True)


def test_dovecot_accounts_not_to_log_in_here_are_refused(daemon_factory, refusing_dovecot):
    d = backend_submission(daemon_factory, "dovecot", refusing_dovecot, smtp='auth_failure_delay = "100ms"')
    sub_port = d.sub_port
    rc, out = swaks_auth(sub_port, "PLAIN", "normal@mx.test", "normalpass", to="x@dest.test")
    assert rc == 0 and "235 2.7.0" in out, out
    for user, password, why in [
        # Suspended the documented way: right password, still no.
        ("suspended@mx.test", "suspendedpass", "nologin, reason=suspended-by-admin"),
        # A proxying passdb (nopassword): any password gets Dovecot's OK.
        ("proxied@mx.test", "any-password-at-all", "proxy, host=192.0.2.9"),
        ("referred@mx.test", "referredpass", "host=192.0.2.10"),
    ]:
        for mech in ["PLAIN", "LOGIN"]:
            rc, out = swaks_auth(sub_port, mech, user, password, to="x@dest.test")
            assert rc != 0 and "535 5.7.8" in out, (user, mech, out)
            assert "235" not in out, out
        d.wait_log(f"failed (dovecot: {user} may not log in here ({why}))")
    assert "any-password-at-all" not in d.log_text()


def test_dovecot_probe_of_a_trickling_socket_has_a_deadline(daemon_factory, tmp_path):
    # Something at Dovecot's address that starts a handshake and then
    # sends a byte every half second, never a whole line: each read is
    # quick, so only a deadline on the whole probe ends it. The daemon
    # starts after it (AUTH offers its guess until Dovecot answers).
    path = tmp_path / "trickle"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(16)
    stop = threading.Event()

    def trickle(conn):
        with conn:
            try:
                conn.sendall(b"VERSION\t1\t2\n")
                while not stop.wait(0.5):
                    conn.sendall(b"x")
            except OSError:
                pass

    def serve():
        srv.settimeout(0.5)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        t0 = time.time()
        d = backend_submission(daemon_factory, "dovecot", path)
        assert time.time() - t0 < 15
        d.wait_log("no complete handshake within 3s")
    finally:
        stop.set()
        srv.close()
