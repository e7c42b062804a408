"""The plugins' dns and kv capabilities and session.client-rdns (issue 14,
items 1-3), end to end: the real daemon, the test fixture plugin
tests/plugins/caps, the real DNS peer (127.0.0.1:5353), a real
redis-server (started per test on a free port), real SMTP clients."""

import json
import shutil
import socket
import subprocess
import threading
import time

import pytest

from conftest import BASE_CONFIG, DNS, free_port, plugin_path

GRANTS = 'grants = ["dns", "kv"]'


def caps_entry(ops=(), stage="rcpt", name=None, report=None, by_rcpt=None, kv_namespace=None):
    lines = [f"[[chain.{stage}]]", 'plugin = "caps"']
    if name:
        lines.append(f'name = "{name}"')
    if kv_namespace:
        lines.append(f'kv_namespace = "{kv_namespace}"')
    lines.append(f"config.ops = {json.dumps(list(ops))}")
    if report:
        lines.append(f'config.report = "{report}"')
    for rcpt, rops in (by_rcpt or {}).items():
        lines.append(f'config.by_rcpt."{rcpt}" = {json.dumps(rops)}')
    return "\n".join(lines) + "\n"


def caps_plugin(*entries, grants=GRANTS, plugin_extra=""):
    return f"""
[[plugin]]
name = "caps"
path = "{plugin_path('caps')}"
{grants}
{plugin_extra}

""" + "\n".join(entries)


def report(d, rcpt="alice@example.test", source="127.0.0.1"):
    """The fixture's report: the text of its 550 reply to RCPT."""
    with d.smtp(source=source) as s:
        s.ehlo("client.test")
        assert s.mail("a@example.org")[0] == 250
        code, text = s.rcpt(rcpt)
    text = text.decode()
    assert code == 550 and text.startswith("5.7.1 "), (code, text)
    return text[len("5.7.1 "):]


def items(text):
    return text.split(" | ")


def config_with_dns(nameserver, timeout):
    return BASE_CONFIG.replace(f'nameservers = ["{{dns}}"]\ntimeout = "1s"',
                               f'nameservers = ["{nameserver}"]\ntimeout = "{timeout}"')


class BlackHole:
    """A nameserver that never answers: a UDP socket that reads and drops,
    and a TCP listener that never accepts."""

    def __init__(self):
        self.port = free_port()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.tcp = socket.socket()
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", self.port))
        self.tcp.listen(64)
        self.udp.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self):
        while self.running:
            try:
                self.udp.recv(4096)
            except OSError:
                pass

    def close(self):
        self.running = False
        self.thread.join()
        self.udp.close()
        self.tcp.close()


@pytest.fixture
def black_hole():
    b = BlackHole()
    yield f"127.0.0.1:{b.port}"
    b.close()


class Redis:
    """A redis-server of the test's own, on a free port, without persistence."""

    def __init__(self, workdir):
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed (tests/run.sh installs it)")
        self.port = free_port()
        self.dir = workdir
        self.proc = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def redis(tmp_path):
    r = Redis(tmp_path)
    r.start()
    yield r
    r.stop()


def test_lookups_are_typed(daemon_factory):
    d = daemon_factory(extra=caps_plugin(caps_entry([
        "a mx.example.test",
        "mx example.test",
        "a nonexistent.test",
        "mx client.example.test",
        "mx nullmx.test",
        "txt example.test",
        "a a..b",
    ])))
    got = items(report(d))
    assert got[:6] == [
        "answers(a=127.0.0.1)",
        "answers(mx=10 mx.example.test)",
        "nxdomain",
        "no-data",
        "answers(mx=0 )",
        "answers(txt=v=spf1 ip4:127.0.0.0/24 -all)",
    ], got
    assert got[6].startswith("invalid(not a domain name"), got


def test_a_batch_answers_in_the_order_of_its_queries(daemon_factory):
    d = daemon_factory(extra=caps_plugin(caps_entry([
        "batch a:nomx.test,mx:dest.test,a:nonexistent.test,a:mx1.dest.test,mx:client.example.test",
    ])))
    text = report(d)
    assert text.startswith("[") and text.endswith("]"), text
    got = text[1:-1].split(" ; ")
    assert got[0] == "answers(a=127.0.0.12)"
    assert got[1].startswith("answers(") and sorted(got[1][8:-1].split(",")) == [
        "mx=10 mx1.dest.test", "mx=20 mx2.dest.test"]
    assert got[2:] == ["nxdomain", "answers(a=127.0.0.10)", "no-data"]


def test_reverse_lookups_of_loopback_go_to_the_nameservers(daemon_factory):
    d = daemon_factory(extra=caps_plugin(caps_entry(
        ["rev 127.0.0.2", "rev 127.0.0.99", "rev 127.0.0.200", "rev nonsense"])))
    got = items(report(d))
    assert got[:3] == ["answers(ptr=client.example.test)",
                       "answers(ptr=dyn-127-0-0-99.pool.test)", "nxdomain"]
    assert got[3].startswith("invalid(not an IP address")


def test_client_rdns_is_typed_and_client_ptr_unchanged(daemon_factory):
    d = daemon_factory(extra=caps_plugin(caps_entry(["rdns", "ptr-opt"])))
    assert items(report(d, source="127.0.0.2")) == ["confirmed(client.example.test)",
                                                    "client.example.test"]
    assert items(report(d, source="127.0.0.3")) == ["none", "no-ptr"]
    d.wait_log("connect from client.example.test[127.0.0.2]")
    d.wait_log("connect from unknown[127.0.0.3]")
    # Not looked up: the plugin can tell that from "no PTR".
    d2 = daemon_factory(name="norev", extra=caps_plugin(caps_entry(["rdns", "ptr-opt"])),
                        config=BASE_CONFIG.replace('timeout = "1s"', 'timeout = "1s"\nreverse_lookup = false'))
    assert items(report(d2, source="127.0.0.2")) == ["not-looked-up", "no-ptr"]


def test_dnsbl_and_rhsbl_lists(daemon_factory):
    d = daemon_factory(extra=caps_plugin(caps_entry([
        "lists dnsbl.test:127.0.0.2,dnsbl.test:127.0.0.1,rhsbl.test:spammer.test,"
        "rhsbl.test:example.test,dnsbl.test:a..b",
    ])))
    got = report(d)[1:-1].split(" ; ")
    assert got[:4] == [
        "listed(127.0.0.2;127.0.0.2 is listed (RFC 5782 test point))",
        "not-listed",
        "listed(127.0.0.2;spammer.test listed in rhsbl.test)",
        "not-listed",
    ], got
    assert got[4].startswith("invalid(subject: not a domain name"), got


def test_a_nameserver_that_does_not_answer_is_temporary(daemon_factory, black_hole):
    d = daemon_factory(config=config_with_dns(black_hole, "300ms"),
                       extra=caps_plugin(caps_entry(["a example.test", "lists dnsbl.test:127.0.0.2"])))
    got = items(report(d))
    assert got[0].startswith("temporary(") and "time limit" not in got[0], got
    assert got[1].startswith("[temporary("), got


def test_dns_waits_are_not_cpu_but_bounded_by_dns_time_limit(daemon_factory, black_hole):
    # 50 ms of CPU per call, 1.5 s of DNS: the lookups wait past the CPU
    # limit without failing the call, and stop at the DNS limit.
    ops = ["a example.test"] * 8
    d = daemon_factory(config=config_with_dns(black_hole, "400ms"), extra=caps_plugin(
        caps_entry(ops), plugin_extra='time_limit = "50ms"\ndns_time_limit = "1500ms"'))
    started = time.time()
    got = items(report(d))
    elapsed = time.time() - started
    assert got[0].startswith("temporary(") and got[-1] == "temporary(time limit)", got
    assert 1.4 < elapsed < 4.5, elapsed
    assert "time limit exceeded" not in d.log_text()


def test_kv_operations_and_their_typed_errors(daemon_factory):
    d = daemon_factory(extra=caps_plugin(caps_entry([
        "set k v", "add k w", "get k", "incr k 1", "add n 5", "incr n -7 60", "incr fresh 3",
        "del k", "del k", "get k", "get missing", "set t x 1",
    ], by_rcpt={"bob@example.test": ["get t", "get n"]})))
    assert items(report(d)) == [
        "ok", "false", "value(v)", "not-a-number", "true", "-2", "3",
        "true", "false", "none", "none", "ok",
    ]
    time.sleep(2.1)
    assert items(report(d, rcpt="bob@example.test")) == ["none", "value(-2)"]


def test_kv_namespaces_are_per_entry_unless_shared(daemon_factory):
    d = daemon_factory(extra=caps_plugin(
        caps_entry(["set k one"], name="one", report="log"),
        caps_entry(["get k"], name="two", report="log"),
        caps_entry(["set k three"], name="three", report="log", kv_namespace="s"),
        caps_entry(["get k"], name="four", kv_namespace="s"),
    ))
    assert report(d) == "value(three)"
    d.wait_log("plugin two: caps: none")


def test_embedded_kv_survives_a_restart(daemon_factory):
    d = daemon_factory(extra=caps_plugin(caps_entry(["incr visits 1"])))
    assert report(d) == "1"
    assert report(d) == "2"
    d.stop()
    d.start()
    assert report(d) == "3"
    assert (d.dir / "var" / "spool" / "kv.redb").exists()


def redis_kv(url, timeout="500ms"):
    return f"""
[kv]
backend = "redis"
url = "{url}"
timeout = "{timeout}"
"""


def test_two_daemons_share_one_redis_and_see_it_go_and_come_back(daemon_factory, redis):
    extra = redis_kv(redis.url) + caps_plugin(caps_entry(["incr c 1"], kv_namespace="shared"))
    a = daemon_factory(name="a", extra=extra)
    b = daemon_factory(name="b", extra=extra)
    assert report(a) == "1"
    assert report(b) == "2"
    assert report(a) == "3"
    redis.stop()
    started = time.time()
    got = report(a)
    assert got.startswith("unavailable(") and time.time() - started < 3, got
    a.wait_log("plugin caps: kv increment:")
    redis.start()
    # The connection manager reconnects; the new server starts empty.
    deadline = time.time() + 10
    while (got := report(b)).startswith("unavailable(") and time.time() < deadline:
        time.sleep(0.2)
    assert got == "1", got


def test_a_capability_needs_its_grant(daemon_factory):
    for grants, missing in (('grants = ["dns"]', "kv"), ('grants = ["kv"]', "dns")):
        d = daemon_factory(name=f"no-{missing}", start=False,
                           extra=caps_plugin(caps_entry(["a example.test"]), grants=grants))
        p = d.cli("check", check=False)
        assert p.returncode == 1
        assert ('plugin[0] "caps"' in p.stderr
                and f"it imports `postern:filter/{missing}@0.2.2`, which its grants do not cover" in p.stderr
                and f'grants = ["{missing}"]' in p.stderr), p.stderr
    d = daemon_factory(name="granted", start=False, extra=caps_plugin(caps_entry(["a example.test"])))
    assert "caps [connect,helo,mail,rcpt,data]" in d.cli("check").stdout
