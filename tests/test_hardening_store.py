"""Durable storage and local delivery against a hostile local user and a
failing disk (issue 19, items 5-8): Maildir links never followed, queue IDs
never reused, journal recovery record by record, a full disk answered at
once."""

import json
import os
import pathlib
import pwd
import re
import shutil
import subprocess
import time

import pytest

from conftest import message

NOBODY = pwd.getpwnam("nobody")
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ownership, mounts)")


def give(path, uid=NOBODY.pw_uid, gid=NOBODY.pw_gid):
    os.lchown(path, uid, gid)


def users_maildir(d, user="alice"):
    """A Maildir the way a local user has it: the tree is theirs."""
    home = d.dir / "var" / "mail" / user
    md = home / "Maildir"
    for sub in ("tmp", "cur", "new"):
        (md / sub).mkdir(parents=True, exist_ok=True)
    for p in (home, md, md / "tmp", md / "cur", md / "new"):
        give(p)
    return md


def plant(target, at):
    """A link the mailbox's user made."""
    at.symlink_to(target)
    give(at)


def send(d, rcpt="alice@example.test", subject="test"):
    with d.smtp() as s:
        s.ehlo("client.test")
        assert s.mail("sender@example.org")[0] == 250
        assert s.rcpt(rcpt)[0] == 250
        code, resp = s.data(message(subject=subject))
        assert code == 250, (code, resp)
    return re.search(rb"queued as ([0-9A-F]{16})", resp).group(1).decode()


def files_below(path):
    return sorted(str(p) for p in pathlib.Path(path).rglob("*") if p.is_file())


@root_only
@pytest.mark.parametrize("component", ["Maildir", "tmp", "new", ".news"])
def test_maildir_links_are_never_followed(daemon_factory, tmp_path, component):
    d = daemon_factory()
    md = users_maildir(d)
    victim = tmp_path / "victim"
    for sub in ("tmp", "cur", "new", ".news/tmp", ".news/cur", ".news/new"):
        (victim / sub).mkdir(parents=True)
    if component == "Maildir":
        shutil.rmtree(md)
        plant(victim, md)
    elif component == ".news":
        plant(victim / ".news", md / ".news")
    else:
        (md / component).rmdir()
        plant(victim / component, md / component)
    rcpt = "alice+news@example.test" if component == ".news" else "alice@example.test"
    qid = send(d, rcpt, subject="planted")
    d.wait_log_re(rf"{qid}: to=<{re.escape(rcpt)}>.*status=deferred \(refusing to deliver "
                  rf"through \S*{re.escape(component)}: a symbolic link, not followed\)")
    # Deferred, kept for a retry, and nothing went where the link leads.
    deadline = time.time() + 10
    while time.time() < deadline and d.queue_files() != [qid]:
        time.sleep(0.05)
    assert d.queue_files() == [qid]
    assert files_below(victim) == []
    # The link gone, the retry delivers, as the mailbox's owner.
    at = md if component == "Maildir" else md / component
    at.unlink()
    # A retry may come between the unlink and this mkdir and make the
    # directory itself (as the owner): either way it is a real directory now.
    at.mkdir(exist_ok=True)
    give(at)
    for sub in ("tmp", "cur", "new"):
        (md / sub).mkdir(exist_ok=True)
        give(md / sub)
    folder = ".news" if component == ".news" else ""
    if folder:
        for sub in ("tmp", "cur", "new"):
            (at / sub).mkdir(exist_ok=True)
            give(at / sub)
    [f] = d.wait_mail("alice", folder=folder)
    assert f.stat().st_uid == NOBODY.pw_uid
    assert "Subject: planted" in f.read_text()
    assert files_below(victim) == []


@root_only
def test_link_at_the_temporary_name_of_a_retry_is_not_written_through(daemon_factory, tmp_path):
    """The derived name of a retry is known in advance: the user makes one
    attempt fail, plants tmp/NAME -> a file of root's, and lets the retry
    come. It must replace the link, never write through it."""
    d = daemon_factory()
    md = users_maildir(d)
    (md / "new").rmdir()
    (md / "new").write_text("not a directory")
    give(md / "new")
    qid = send(d, subject="retried")
    d.wait_log_re(rf"{qid}: to=<alice@example.test>.*status=deferred")
    queued = d.dir / "var" / "spool" / "queue" / qid
    deadline = time.time() + 10
    while time.time() < deadline and not queued.exists():
        time.sleep(0.05)
    arrival = int(float(re.search(rb'"arrival":([0-9.]+)', queued.read_bytes()).group(1)))
    name = f"{arrival}.J{qid}_0.mx.example.test"
    victim = tmp_path / "victim"
    victim.write_text("precious")
    plant(victim, md / "tmp" / name)
    (md / "new").unlink()
    (md / "new").mkdir(exist_ok=True)  # a retry may have made it already
    give(md / "new")
    [f] = d.wait_mail("alice")
    assert victim.read_text() == "precious"
    assert f.name.startswith(name)
    assert "Subject: retried" in f.read_text()
    assert f.stat().st_uid == NOBODY.pw_uid
    assert not os.path.lexists(md / "tmp" / name)
    d.wait_log("in place of a delivery's temporary file (not followed)")


@root_only
def test_delivery_is_made_as_the_mailbox_owner_and_not_through_a_third_accounts_tree(daemon_factory):
    d = daemon_factory()
    md = users_maildir(d)
    send(d, subject="owned")
    [f] = d.wait_mail("alice")
    assert (f.stat().st_uid, f.stat().st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    # bob's directory belongs to a third account ("daemon"), his Maildir
    # to nobody: that account could swap bob's Maildir at any moment.
    home = d.dir / "var" / "mail" / "bob"
    (home / "Maildir").mkdir(parents=True)
    give(home, 1, 1)
    give(home / "Maildir")
    qid = send(d, "bob@example.test", subject="third")
    d.wait_log_re(rf"{qid}: to=<bob@example.test>.*status=deferred \(refusing to deliver "
                  rf"through \S*var/mail/bob: owned by uid 1, which is neither root nor the "
                  rf"mailbox owner \(uid {NOBODY.pw_uid}\)\)")
    assert files_below(home) == []
    assert md.is_dir()


FROZEN_CLOCK_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

/* The wall clock stands still at $FROZEN_REALTIME (seconds since the
   epoch); the monotonic clock, which timers use, runs on. */
int clock_gettime(clockid_t id, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int r = real(id, ts);
    const char *at = getenv("FROZEN_REALTIME");
    if (r == 0 && at && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        ts->tv_sec = atol(at);
        ts->tv_nsec = 0;
    }
    return r;
}
"""


@pytest.fixture
def frozen_clock(tmp_path, monkeypatch):
    """Runs the daemons of the test with a wall clock that stands still:
    two runs see the same time, as when a clock set back at boot returns
    to where the last run was."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler for the clock shim")
    src = tmp_path / "frozen.c"
    src.write_text(FROZEN_CLOCK_C)
    lib = tmp_path / "frozen.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src), "-ldl"], check=True)
    monkeypatch.setenv("LD_PRELOAD", str(lib))
    monkeypatch.setenv("FROZEN_REALTIME", str(int(time.time())))


def test_a_clock_set_back_across_a_restart_reissues_no_queue_id(daemon_factory, frozen_clock):
    """Both runs see the same wall clock. Before IDs were kept unique across
    restarts, the second run handed out the first run's IDs again: its
    message replaced a queued one (lost) and inherited its delivery state
    (recipients skipped)."""
    d = daemon_factory()
    blocker = d.dir / "var" / "mail" / "bob"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("in the way")
    first = [send_to(d, ["alice@example.test", "bob@example.test"], f"run1-{i}") for i in range(3)]
    d.wait_mail("alice", count=3)
    for qid in first:
        d.wait_log(f"{qid}: queued for retry")
    assert sorted(d.queue_files()) == sorted(first)
    assert d.stop() == 0
    d.start()
    second = [send_to(d, ["alice@example.test", "bob@example.test"], f"run2-{i}") for i in range(3)]
    assert not set(first) & set(second), (first, second)
    assert min(second) > max(first)
    d.wait_mail("alice", count=6)
    blocker.unlink()
    d.stop()
    d.start()
    bob = d.wait_mail("bob", count=6, timeout=20)
    time.sleep(1)
    got = sorted(re.search(r"Subject: (run\d-\d)", f.read_text()).group(1) for f in d.new_mail("bob"))
    assert got == sorted([f"run1-{i}" for i in range(3)] + [f"run2-{i}" for i in range(3)]), got
    got = sorted(re.search(r"Subject: (run\d-\d)", f.read_text()).group(1) for f in d.new_mail("alice"))
    assert got == sorted([f"run1-{i}" for i in range(3)] + [f"run2-{i}" for i in range(3)]), got
    assert len(bob) == 6


def send_to(d, rcpts, subject):
    with d.smtp() as s:
        s.ehlo("client.test")
        assert s.mail("sender@example.org")[0] == 250
        for r in rcpts:
            assert s.rcpt(r)[0] == 250
        code, resp = s.data(message(subject=subject))
        assert code == 250, (code, resp)
    return re.search(rb"queued as ([0-9A-F]{16})", resp).group(1).decode()


def mount_tmpfs(path, size):
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")


def umount(*paths):
    for p in paths:
        subprocess.run(["umount", "-l", str(p)])


def fill(fs_root):
    """Takes every free byte of the file system at fs_root."""
    with open(fs_root / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def with_spool(d, spool, queue_extra=""):
    d.config.write_text(d.config_text.replace('spool_dir = "var/spool"', f'spool_dir = "{spool}"').replace(
        'retry_max = "1s"', f'retry_max = "1s"\n{queue_extra}'))


def big_message(subject, size):
    return message(subject=subject) + (b"y" * 998 + b"\r\n") * (size // 1000)


@root_only
def test_full_disk_is_answered_452_at_once_on_the_journal_path(daemon_factory, tmp_path):
    spool = tmp_path / "spool"
    mount_tmpfs(spool, "1m")
    try:
        d = daemon_factory(start=False)
        with_spool(d, spool)
        d.start()
        with d.smtp() as s:
            s.ehlo("client.test")
            assert s.mail("a@example.org")[0] == 250
            assert s.rcpt("alice@example.test")[0] == 250
            started = time.time()
            code, resp = s.data(big_message("too big", 1_500_000))
            assert (code, resp[:5]) == (452, b"4.3.1"), (code, resp)
            assert time.time() - started < 5
            for i in range(3):
                assert s.sendmail("a@example.org", ["alice@example.test"], message(subject=f"small {i}")) == {}
        assert len(d.wait_mail("alice", count=3)) == 3
        d.wait_log_re(r"[0-9A-F]{16}: cannot queue message from \S+: journal: No space left on device")
        assert list((spool / "incoming").iterdir()) == []
        assert d.stop() == 0
    finally:
        umount(spool)


@root_only
def test_sessions_get_452_promptly_while_the_journal_cannot_empty(daemon_factory, tmp_path):
    """The spool's file system is full and a mailbox cannot take mail: the
    journal (on a file system of its own) keeps the messages, and their
    budget stays spent. A new session gets 452 4.3.1 within seconds instead
    of waiting for ever; once mail can leave, mail is taken again."""
    spool = tmp_path / "spool"
    mount_tmpfs(spool, "2m")
    mount_tmpfs(spool / "journal", "160m")
    try:
        d = daemon_factory(start=False)
        with_spool(d, spool)
        d.start()
        blocker = d.dir / "var" / "mail" / "alice"
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("in the way")
        fill(spool)
        body = 9_600_000
        with d.smtp() as s:
            for i in range(6):
                assert s.sendmail("a@example.org", ["alice@example.test"], big_message(f"big {i}", body)) == {}
        d.wait_log_re(r"cannot (deliver or )?queue for retry")
        with d.smtp() as s:
            s.ehlo("client.test")
            assert s.mail("a@example.org")[0] == 250
            assert s.rcpt("alice@example.test")[0] == 250
            started = time.time()
            code, resp = s.data(big_message("waits", body))
            waited = time.time() - started
            assert (code, resp[:5]) == (452, b"4.3.1"), (code, resp)
            assert waited < 15, waited
        d.wait_log("journal: no room for")
        blocker.unlink()
        assert len(d.wait_mail("alice", count=6, timeout=30)) == 6
        with d.smtp() as s:
            assert s.sendmail("a@example.org", ["alice@example.test"], message(subject="after")) == {}
        d.wait_mail("alice", count=7)
        assert d.stop() == 0
    finally:
        umount(spool / "journal", spool)


@root_only
def test_recovery_goes_on_when_the_spool_refuses_a_commit(daemon_factory, tmp_path):
    """Two messages wait in the journal at a crash. At the restart the
    spool takes the first (small) and refuses the second (no room): the
    first is scheduled, the second tried again while running, and both
    arrive without another restart."""
    spool = tmp_path / "spool"
    mount_tmpfs(spool, "1m")
    mount_tmpfs(spool / "journal", "32m")
    try:
        d = daemon_factory(start=False)
        with_spool(d, spool, 'journal_seal_idle = "1h"')
        d.start()
        blocker = d.dir / "var" / "mail" / "alice"
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("in the way")
        fill(spool)
        with d.smtp() as s:
            assert s.sendmail("a@example.org", ["alice@example.test"], message(subject="small one")) == {}
            assert s.sendmail("a@example.org", ["alice@example.test"], big_message("big one", 1_500_000)) == {}
        d.wait_log_re(r"cannot (deliver or )?queue for retry")
        d.kill9()
        (spool / "filler").unlink()
        d.start()  # listening once recovery is done
        blocker.unlink()
        files = d.wait_mail("alice", count=2, timeout=20)
        subjects = sorted(re.search(r"Subject: (\w+ one)", f.read_text()).group(1) for f in files)
        assert subjects == ["big one", "small one"]
        assert "journal: recovery done (2 messages, 1 spooled for retry, 1 left to retry" in d.log_text()
        assert d.stop() == 0
    finally:
        umount(spool / "journal", spool)


def test_a_segment_damaged_in_the_middle_loses_only_the_damaged_record(daemon_factory):
    d = daemon_factory(start=False)
    d.config.write_text(d.config_text.replace(
        'retry_max = "1s"', 'retry_max = "1s"\njournal_seal_idle = "1h"'))
    d.start()
    subjects = ["first", "second", "third"]
    with d.smtp() as s:
        for subj in subjects:
            assert s.sendmail("sender@example.org", ["bob@example.test"], message(subject=subj)) == {}
    files = d.wait_mail("bob", count=3)
    d.kill9()
    # A power loss took the copies the journal had not synced yet ...
    for f in files:
        f.unlink()
    # ... and damaged the framing of the second record (its length).
    [seg] = (d.dir / "var" / "spool" / "journal").iterdir()
    data = bytearray(seg.read_bytes())
    starts = [m.start() for m in re.finditer(rb"PJRECORD|PSTRNJ01", bytes(data))]
    assert len(starts) == 3, starts
    data[starts[1] + 9] ^= 0x55
    seg.write_bytes(bytes(data))
    d.start()  # listening once recovery is done
    got = sorted(re.search(r"Subject: (\w+)", f.read_text()).group(1) for f in d.wait_mail("bob", count=2))
    assert got == ["first", "third"]
    assert "journal: recovery done (2 messages" in d.log_text()
    d.wait_log_re(r"journal segment [0-9a-f]+: \d+ bytes at offset \d+ failed their checks \(damage\); kept in \S+corrupt/journal-")
    [kept] = (d.dir / "var" / "spool" / "corrupt").iterdir()
    assert b"Subject: second" in kept.read_bytes()
    assert d.stop() == 0
