"""The plugin runtime end to end: the compile cache runs only what the
daemon compiled, budgets charge CPU, the pool holds what it promises,
and reloads free what they replace."""

import os
import pathlib
import smtplib
import socket
import struct
import subprocess
import sys
import threading
import time

from conftest import BASE_CONFIG, BIN, ROOT, message, plugin_path
from test_plugins import PYTHON_PLUGIN, access_plugin, misbehave, send


def int3_text(artifact):
    """The artifact as a checkout could ship it: a valid-looking ELF whose
    code (.text) is all int3 (0xCC), without the daemon's MAC."""
    data = bytearray(artifact)
    assert data[:4] == b"\x7fELF", "not an ELF artifact"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i):
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    _, names_off, _ = section(shstrndx)
    filled = 0
    for i in range(shnum):
        name, offset, size = section(i)
        end = data.index(b"\0", names_off + name)
        if bytes(data[names_off + name:end]) == b".text":
            data[offset:offset + size] = b"\xcc" * size
            filled += size
    assert filled > 0, "no .text section"
    return bytes(data)


def planted(sealed):
    """A planted artifact made from a genuine one (MAC cut off)."""
    return int3_text(sealed.read_bytes()[:-32])


def test_planted_artifact_in_the_daemons_cache_is_never_run(daemon_factory, tmp_path):
    # The cache lives in the spool by default; here in a directory of the
    # test's, with the key in the spool. An artifact the daemon did not
    # seal (machine code full of int3, valid ELF layout) is compiled again,
    # never run: before, the daemon died of SIGTRAP.
    cache = tmp_path / "cache"
    config = BASE_CONFIG.replace('cache_dir = "{cache}"', f'cache_dir = "{cache}"').replace(
        'cache_key = "{cache}.key"\n', '')
    d = daemon_factory(start=False, config=config, extra=access_plugin('{ "blocked.test" = "REJECT" }'))
    d.start()
    assert send(d, "spam@blocked.test", "alice@example.test")[0] == 554
    d.stop()
    key = d.dir / "var" / "spool" / "plugin-cache.key"
    assert key.stat().st_mode & 0o777 == 0o600 and key.stat().st_size == 32
    [artifact] = cache.glob("*.cwasm")
    bad = planted(artifact)
    artifact.write_bytes(bad)
    before = len(d.log_text())
    d.start()
    assert send(d, "spam@blocked.test", "alice@example.test")[0] == 554
    assert send(d, "ok@fine.test", "alice@example.test") == (250, 250)
    log = d.log_text()[before:]
    assert "its MAC does not match the cache key" in log and "compiled in" in log, log
    assert d.stop() == 0
    # Rewritten, sealed: the next start loads it.
    assert artifact.read_bytes() != bad
    before = len(d.log_text())
    d.start()
    assert send(d, "spam@blocked.test", "alice@example.test")[0] == 554
    assert "compiled in" not in d.log_text()[before:]


def test_plugin_test_never_runs_a_cache_from_the_working_directory(tmp_path):
    # `postern plugin test` in a checkout that ships
    # var/cache/plugins/<key>.cwasm (the old default, relative to the
    # working directory): the planted code never runs.
    fixture = ROOT / "plugins" / "access" / "tests" / "access.toml"
    own = tmp_path / "own-cache"
    args = ["--cache-dir", str(own), "--cache-key", str(tmp_path / "own.key")]
    p = subprocess.run([str(BIN), "plugin", "test", *args, str(fixture)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    [artifact] = own.glob("*.cwasm")
    checkout = tmp_path / "checkout"
    shipped = checkout / "var" / "cache" / "plugins"
    shipped.mkdir(parents=True)
    (shipped / artifact.name).write_bytes(planted(artifact))
    p = subprocess.run([str(BIN), "plugin", "test", str(fixture)], capture_output=True, text=True, cwd=checkout)
    assert p.returncode == 0, (p.returncode, p.stdout + p.stderr)
    assert "compiled in" in p.stderr and "(no cache)" in p.stderr, p.stderr
    # Given the checkout's directory as a cache, with a key of our own:
    # the planted file fails the MAC and is replaced.
    key = tmp_path / "k.key"
    p = subprocess.run([str(BIN), "plugin", "test", "--cache-dir", str(shipped), "--cache-key", str(key),
                        str(fixture)], capture_output=True, text=True, cwd=checkout)
    assert p.returncode == 0, (p.returncode, p.stdout + p.stderr)
    assert "its MAC does not match the cache key" in p.stderr, p.stderr
    assert key.stat().st_mode & 0o777 == 0o600


def busy_machine(per_core=3):
    """Processes that keep every core busy (the test stops them)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(per_core * (os.cpu_count() or 1))]


def test_time_limit_counts_cpu_not_a_busy_machine(daemon_factory):
    # A plugin that needs ~0.18 s of CPU passes its 500 ms limit while other
    # processes keep both cores busy (it then takes far longer than 500 ms
    # of wall-clock time: before, that failed it, 451). A plugin that never
    # ends still fails its limit.
    extra = (misbehave("burner", "burn", "alice@", time_limit="500ms")
             + misbehave("looper", "loop", "bob@", time_limit="500ms"))
    d = daemon_factory(extra=extra)
    hogs = busy_machine()
    try:
        for _ in range(3):
            assert send(d, "a@example.org", "alice@example.test") == (250, 250)
        with d.smtp() as s:
            s.ehlo("client.test")
            s.mail("a@example.org")
            code, resp = s.rcpt("bob@example.test")
            assert code == 451 and resp.startswith(b"4.3.0"), (code, resp)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    d.wait_log("plugin looper failed at rcpt: time limit exceeded")
    assert "plugin burner failed" not in d.log_text()
    # On an idle machine the loop is stopped by its CPU limit.
    with d.smtp() as s:
        s.ehlo("client.test")
        s.mail("a@example.org")
        assert s.rcpt("bob@example.test")[0] == 451
    d.wait_log("plugin looper failed at rcpt: time limit exceeded (500ms of CPU)")


def test_transaction_cpu_budget_ends_plugin_work_for_the_transaction(daemon_factory):
    # Each RCPT costs ~0.18 s of plugin CPU; the transaction may use 300 ms:
    # the third recipient finds the budget spent and gets 451, even though
    # the plugin's on_error would skip it (a client must not be able to
    # switch policy off). The next transaction starts afresh.
    extra = misbehave("burner", "burn", "", on_error="continue", time_limit="500ms")
    d = daemon_factory(extra='transaction_cpu = "300ms"\n' + extra)
    with d.smtp() as s:
        s.ehlo("client.test")
        assert s.mail("a@example.org")[0] == 250
        assert s.rcpt("alice@example.test")[0] == 250
        assert s.rcpt("bob@example.test")[0] == 250
        code, resp = s.rcpt("postmaster@example.test")
        assert code == 451 and resp.startswith(b"4.3.0"), (code, resp)
        assert s.data(message(subject="two of three"))[0] == 250
        assert s.mail("a@example.org")[0] == 250
        assert s.rcpt("postmaster@example.test")[0] == 250
        s.rset()
    d.wait_log("plugin burner failed at rcpt: the transaction's plugins used their 300ms of CPU "
               "(wasm.transaction_cpu); on_error=tempfail")


def test_pool_holds_max_instances_of_the_python_plugin(daemon_factory):
    # max_instances = 6: three sessions each hold an instance of the Python
    # plugin and of a plugin that then waits (~2 s) at the same data stage.
    # Before, the pool's totals allowed ~8 core instances per slot and the
    # Python component makes 14: the third session got 451 (no slot).
    n = 3
    extra = f"""
[[plugin]]
name = "subject-score"
path = "{PYTHON_PLUGIN}"
memory_limit = "128M"
time_limit = "2s"

[[chain.data]]
plugin = "subject-score"
config.words = {{ viagra = 5.0 }}
""" + misbehave("sleeper", "sleep", "alice@", on_error="continue", stage="data")
    config = BASE_CONFIG.replace("max_instances = 200", f"max_instances = {2 * n}")
    d = daemon_factory(config=config, extra=extra)
    p = d.cli("check")
    assert "6 plugin instances at once" in p.stdout, p.stdout
    ready = threading.Barrier(n)
    codes = []

    def session():
        with d.smtp() as s:
            s.ehlo("client.test")
            s.mail("a@example.org")
            s.rcpt("alice@example.test")
            ready.wait(10)
            codes.append(s.data(message(subject="pooled"))[0])

    threads = [threading.Thread(target=session) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert codes == [250] * n, (codes, d.log_text()[-2000:])
    assert "no free plugin instance slot" not in d.log_text()
    # They did overlap: each waited in the sleeper while the others ran.
    deadline = time.time() + 10
    while d.log_text().count("plugin sleeper failed at data: time limit exceeded") < n:
        assert time.time() < deadline, d.log_text()[-2000:]
        time.sleep(0.05)


def test_a_guest_leaking_host_resources_is_stopped_early(daemon_factory):
    # A guest that makes pollables in a loop and never drops them: each is
    # an entry in the host's resource table (host heap). It is stopped
    # after ~500 (1024 entries), not 65,536 (wasmtime's own limits).
    d = daemon_factory(extra=misbehave("leaky", "resources", "alice@", time_limit="2s"))
    with d.smtp() as s:
        s.ehlo("client.test")
        s.mail("a@example.org")
        code, resp = s.rcpt("alice@example.test")
        assert code == 451 and resp.startswith(b"4.3.0"), (code, resp)
        assert s.rcpt("bob@example.test")[0] == 250
    d.wait_log("plugin leaky failed at rcpt: trapped: resource table has no free keys")
    log = d.log_text()
    assert "resources: 256 pollables held" in log
    assert "resources: 1024 pollables held" not in log


def leb128(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def variants(directory, count):
    """Distinct builds of the misbehave plugin: the same component with a
    custom section naming its number (another content hash, another
    compiled artifact)."""
    base = pathlib.Path(plugin_path("misbehave")).read_bytes()
    paths = []
    for i in range(count):
        name = b"postern-test-variant"
        payload = leb128(len(name)) + name + str(i).encode()
        p = directory / f"variant{i}.wasm"
        p.write_bytes(base + b"\x00" + leb128(len(payload)) + payload)
        paths.append(p)
    return paths


def memory(pid):
    """(RSS in KiB, mappings of plugin machine code): anonymous executable
    mappings, or mapped artifacts, one per compiled build in memory."""
    rss = next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS:"))
    code = 0
    for line in open(f"/proc/{pid}/maps"):
        fields = line.split()
        if fields[1].startswith("r-x") and (len(fields) < 6 or fields[5].endswith(".cwasm")):
            code += 1
    return rss, code


def admin(d, command):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(d.dir / "var" / "spool" / "admin.sock"))
        s.sendall(command.encode() + b"\n")
        return s.makefile().readline()


def test_reloads_free_what_they_replace(daemon_factory, tmp_path):
    # 1000 reloads under light traffic, each with another config and, in
    # turn, one of ten builds of the plugin (all compiled once, then loaded
    # from the cache), warm instances on. Memory stays flat: replaced
    # generations, their warm instances and the machine code only they used
    # are freed. Before, every build ever loaded stayed mapped (ten), and a
    # session pinned its generation's warm pool.
    builds = variants(tmp_path, 10)

    def plugin(i):
        return f"""
[[plugin]]
name = "p"
path = "{builds[i % len(builds)]}"
reuse_instances = true

[[chain.rcpt]]
plugin = "p"
config = {{ mode = "ok", reload = {i} }}
"""

    config = BASE_CONFIG.replace('cache_dir = "{cache}"', f'cache_dir = "{tmp_path / "cache"}"')
    d = daemon_factory(config=config, extra=plugin(0))
    template = d.config_text.replace(plugin(0), "{plugin}")
    stop = threading.Event()
    failures = []

    def traffic():
        while not stop.is_set():
            try:
                r = send(d, "a@example.org", "alice@example.test")
                if r != (250, 250):
                    failures.append(r)
            except (smtplib.SMTPException, OSError) as e:
                failures.append(repr(e))
            time.sleep(0.02)

    worker = threading.Thread(target=traffic)
    worker.start()
    pinned = None
    measured = {}
    try:
        for i in range(1, 1001):
            d.config.write_text(template.replace("{plugin}", plugin(i)))
            answer = admin(d, "reload")
            assert answer.startswith("ok"), answer
            if i == 5:
                # A session that stays open from generation 6 to the end.
                pinned = d.smtp()
                pinned.ehlo("client.test")
                assert pinned.mail("a@example.org")[0] == 250
                assert pinned.rcpt("alice@example.test")[0] == 250
            if i in (10, 1000):
                measured[i] = memory(d.proc.pid)
    finally:
        stop.set()
        worker.join(30)
    assert failures == [], failures[:5]
    (rss10, code10), (rss1000, code1000) = measured[10], measured[1000]
    print(f"RSS after 10 reloads {rss10} KiB, after 1000 {rss1000} KiB; builds mapped {code10}, {code1000}")
    assert rss1000 < rss10 + 16 * 1024, (rss10, rss1000)
    time.sleep(0.5)
    # The current build, and the one the open session's generation uses.
    assert memory(d.proc.pid)[1] == 2, memory(d.proc.pid)
    pinned.quit()
    deadline = time.time() + 10
    while memory(d.proc.pid)[1] != 1:
        assert time.time() < deadline, memory(d.proc.pid)
        time.sleep(0.05)
