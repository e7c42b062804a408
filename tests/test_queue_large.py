"""A large deferred queue stays usable (issue 13, item 4): with N deferred
messages planted in the spool, `postern queue list --json` lists every one,
the daemon starts listening and answers within a bound that grows with N,
and neither keeps the messages in memory.

The messages are copies of one the daemon deferred itself, each given a
fresh queue ID (below the real one, so never one the daemon hands out) and
a next attempt an hour away, so the daemon only schedules them. N is 20,000
here (well under 30 s); `bench/queue_large.py` runs the same with 100,000
and prints the figures."""

import json
import os
import struct
import time
import zlib

from conftest import BIN, wait_port

N = 20_000
# Content per planted message: keeping every message in memory would cost
# at least N * BODY bytes, far above the RSS bounds below.
BODY = 8192
MAGIC = b"PSTRNQ01"


def plant(queue, qid, n, next_attempt):
    """Copies the queue file `qid` (and its state) `n` times under fresh IDs
    below it; returns the IDs. The trailer's CRC-32 is made again for the
    new envelope (content len u64, envelope len u64, CRC-32 u32, magic)."""
    data = (queue / qid).read_bytes()
    assert data.endswith(MAGIC)
    content_len, env_len = struct.unpack("<QQ", data[-28:-12])
    content, env = data[:content_len], data[content_len:content_len + env_len]
    content_crc = zlib.crc32(content)
    state = json.loads((queue / f"{qid}.state").read_text())
    state["next_attempt"] = next_attempt
    # One state file linked under many IDs (ext4 allows 65,000 links): the
    # daemon only reads them (a new state replaces its own link by a rename).
    shared_state = queue / "planted-state"
    old = qid.encode()
    assert env.count(old) >= 1
    base = int(qid, 16)
    ids = []
    for i in range(1, n + 1):
        new = f"{base - i:016X}"
        new_env = env.replace(old, new.encode())
        crc = zlib.crc32(new_env, content_crc) & 0xFFFFFFFF
        fd = os.open(queue / new, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, content + new_env + struct.pack("<QQI", content_len, len(new_env), crc) + MAGIC)
        os.close(fd)
        if i % 50_000 == 1:
            shared_state.unlink(missing_ok=True)
            shared_state.write_text(json.dumps(state))
        os.link(shared_state, queue / f"{new}.state")
        ids.append(new)
    shared_state.unlink()
    return ids


def run_cli(daemon, *args):
    """Runs a CLI command: (seconds, its peak RSS in KiB from wait4, stdout)."""
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        fd = os.open(str(daemon.dir / "cli.out"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 1)
        os.chdir(daemon.dir)
        os.execv(str(BIN), [str(BIN), *args, "--config", str(daemon.config)])
    _, status, usage = os.wait4(pid, 0)
    elapsed = time.monotonic() - started
    assert os.waitstatus_to_exitcode(status) == 0
    return elapsed, usage.ru_maxrss, (daemon.dir / "cli.out").read_text()


def peak_rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def measure(daemon_factory, n):
    """Plants `n` deferred messages; returns the figures."""
    d = daemon_factory(retry="1h")
    figures = {"n": n}
    # Baseline: the same daemon with one message queued.
    with d.smtp() as s:
        s.sendmail("sender@example.org", ["far@dest.test"],
                   b"Subject: large queue\r\n\r\n" + b"x" * (BODY - 2) + b"\r\n")
    d.wait_log("status=deferred (connect to mx2.dest.test[127.0.0.11]:9: Connection refused")
    queue = d.dir / "var" / "spool" / "queue"
    deadline = time.time() + 10
    while not list(queue.glob("*.state")) and time.time() < deadline:
        time.sleep(0.05)
    figures["baseline_rss_kib"] = peak_rss_kib(d.proc.pid)
    d.stop()
    [qid] = d.queue_files()

    started = time.monotonic()
    planted = plant(queue, qid, n - 1, int(time.time()) + 3600)
    figures["plant_s"] = time.monotonic() - started
    assert len(planted) == n - 1

    elapsed, rss, out = run_cli(d, "queue", "list", "--json")
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    figures["list_s"], figures["list_rss_kib"] = elapsed, rss
    assert len(entries) == n
    assert {e["queue_id"] for e in entries} == set(planted) | {qid}
    assert all(e["queue_name"] == "deferred" for e in entries)
    assert entries[0]["recipients"][0]["address"] == "far@dest.test"
    assert "Connection refused" in entries[0]["recipients"][0]["delay_reason"]

    started = time.monotonic()
    d.start(wait=False)
    wait_port(d.port, timeout=60 + n / 1000, proc=d.proc)
    figures["listen_s"] = time.monotonic() - started
    with d.smtp() as s:
        code, _ = s.ehlo("client.test")
        assert code == 250
        assert s.noop()[0] == 250
    figures["answer_s"] = time.monotonic() - started
    # Once every message is scheduled (none is due): a message still goes
    # through, and the daemon's memory did not grow with the messages.
    time.sleep(1.0)
    with d.smtp() as s:
        s.sendmail("sender@example.org", ["alice@example.test"], b"Subject: still usable\r\n\r\nhi\r\n")
    d.wait_mail("alice", timeout=30)
    figures["daemon_rss_kib"] = peak_rss_kib(d.proc.pid)
    figures["first_mail_s"] = time.monotonic() - started
    return figures


def test_a_large_deferred_queue_stays_usable(daemon_factory):
    f = measure(daemon_factory, N)
    print(f)
    # Generous bounds, proportional to N (measured by hand: 100,000 take
    # 2-3 s to list and 1.6 s to listen; a CI machine may be busier).
    per_msg = N / 100_000
    assert f["list_s"] < 5 + 40 * per_msg, f
    assert f["listen_s"] < 5 + 40 * per_msg, f
    assert f["first_mail_s"] < 10 + 60 * per_msg, f
    # Memory: what a listing keeps per message (its envelope) and what the
    # daemon keeps (a schedule entry) are far below the message itself.
    assert (f["list_rss_kib"] - f["baseline_rss_kib"]) * 1024 / N < BODY / 2, f
    assert (f["daemon_rss_kib"] - f["baseline_rss_kib"]) * 1024 / N < BODY / 8, f
