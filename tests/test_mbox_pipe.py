"""Local delivery into mbox files and through a command (issue 13, item 2):
`[local] mailbox = "mbox"` appends to `local.mbox` with `From ` lines,
mboxrd quoting, fcntl + dotlock locking; `mailbox = "pipe"` runs
`[local.pipe] command` (no shell) as its user with the message on stdin,
its exit status judged as Postfix's pipe(8) does, killed after its
timeout."""

import fcntl
import json
import os
import pathlib
import pwd
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid

import pytest

from conftest import BASE_CONFIG, message

NOBODY = pwd.getpwnam("nobody")
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (runs commands as another user)")
LDA = shutil.which("dovecot-lda") or "/usr/lib/dovecot/dovecot-lda"


def local_config(lines):
    """BASE_CONFIG with `lines` added to its [local] section."""
    anchor = 'maildir = "var/mail/{{user}}/Maildir"'
    assert anchor in BASE_CONFIG
    return BASE_CONFIG.replace(anchor, anchor + "\n" + lines.replace("{", "{{").replace("}", "}}"))


def send(d, rcpts, subject="test", body="Hello.\r\n", sender="sender@example.org"):
    with d.smtp() as s:
        s.ehlo("client.test")
        code, resp = s.mail(sender)
        assert code == 250, resp
        for r in rcpts:
            assert s.rcpt(r)[0] == 250
        code, resp = s.data(message(subject=subject, body=body))
        assert code == 250, (code, resp)
    return re.search(rb"queued as ([0-9A-F]{16})", resp).group(1).decode()


def wait_for(pred, what, d, timeout=15.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"{what}\n{d.log_text()[-3000:]}")


def mbox_messages(path):
    """The messages of an mbox file, split at its `From ` lines."""
    text = path.read_text() if path.exists() else ""
    return [m for m in re.split(r"(?m)^(?=From \S+  \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}$)", text) if m]


# ---------------------------------------------------------------- mbox


def test_two_messages_are_appended_with_from_lines_and_quoting(daemon_factory):
    d = daemon_factory(config=local_config('mailbox = "mbox"\nmbox = "var/mail/{user}"'))
    out = d.cli("route", "alice@example.test").stdout
    assert "alice@example.test -> alice@example.test (local, mbox var/mail/alice)" in out, out
    body = "From the start\r\n>From quoted\r\nFrom: not a header here\r\nlast line\r\n"
    send(d, ["alice@example.test"], subject="first", body=body)
    send(d, ["alice@example.test"], subject="second", sender="")
    mbox = d.dir / "var" / "mail" / "alice"
    msgs = wait_for(lambda: len(mbox_messages(mbox)) >= 2 and mbox_messages(mbox), "two messages in the mbox", d)
    # Delivered after the 250 (the journal): in either order.
    first, second = sorted(msgs, key=lambda m: "Subject: second" in m)
    assert first.startswith("From sender@example.org  ")
    assert second.startswith("From MAILER-DAEMON  ")
    assert "\r" not in first + second
    lines = first.split("\n")
    assert lines[1] == "Return-Path: <sender@example.org>"
    assert lines[2] == "Delivered-To: alice@example.test"
    assert "\n>From the start\n>>From quoted\nFrom: not a header here\nlast line\n\n" in first
    assert first.endswith("last line\n\n")
    assert "Subject: second" in second and second.endswith("\n\n")
    assert "Return-Path: <>" in second
    # Logged once the locks are given back.
    sent = r"to=<alice@example.test>, .*relay=local, .*status=sent \(delivered to mailbox var/mail/alice\)"
    wait_for(lambda: len(re.findall(sent, d.log_text())) == 2, "two deliveries logged", d)
    assert not (d.dir / "var" / "mail" / "alice.lock").exists()


HOLD = """
import fcntl, sys, time
f = open(sys.argv[1], "r+")
fcntl.lockf(f, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_held_fcntl_lock_makes_delivery_wait_then_defer_then_succeed(daemon_factory):
    d = daemon_factory(
        config=local_config('mailbox = "mbox"\nmbox = "var/mail/{user}"\nmbox_lock_timeout = "2s"')
    )
    mbox = d.dir / "var" / "mail" / "bob"
    mbox.parent.mkdir(parents=True, exist_ok=True)
    mbox.write_text("")
    # A POSIX lock held by another program, as a mail reader takes it.
    holder = subprocess.Popen(["python3", "-c", HOLD, str(mbox), "5"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.time()
        send(d, ["bob@example.test"], subject="waits")
        d.wait_log_re(r"to=<bob@example.test>, .*dsn=4\.2\.0, status=deferred \(.*locked \(fcntl\)")
        assert time.time() - started >= 1.5, "deferred without waiting for the lock"
        assert mbox.read_text() == "", "written through a held lock"
        holder.wait(timeout=10)
        released = time.time()
        wait_for(lambda: "Subject: waits" in mbox.read_text(), "delivered after the lock went", d)
        assert time.time() >= released
    finally:
        holder.kill()
        holder.wait()
    assert len(mbox_messages(mbox)) == 1


def test_a_dotlock_is_respected_and_a_stale_one_removed(daemon_factory):
    d = daemon_factory(
        config=local_config('mailbox = "mbox"\nmbox = "var/mail/{user}"\nmbox_lock_timeout = "1s"')
    )
    lock = d.dir / "var" / "mail" / "alice.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("")
    send(d, ["alice@example.test"], subject="dotlocked")
    d.wait_log_re(r"to=<alice@example.test>, .*status=deferred \(.*locked \(dotlock\)")
    assert not (d.dir / "var" / "mail" / "alice").exists() or "dotlocked" not in (d.dir / "var/mail/alice").read_text()
    # Ten minutes old: left by a crash, removed.
    old = time.time() - 600
    os.utime(lock, (old, old))
    mbox = d.dir / "var" / "mail" / "alice"
    wait_for(lambda: mbox.exists() and "Subject: dotlocked" in mbox.read_text(), "delivered past a stale dotlock", d)
    d.wait_log("removing a stale lock")
    # Logged once the delivery's own dotlock is gone again.
    d.wait_log_re(r"to=<alice@example.test>, .*status=sent \(delivered to mailbox")
    assert not lock.exists()


def test_concurrent_deliveries_never_interleave(daemon_factory):
    d = daemon_factory(config=local_config('mailbox = "mbox"\nmbox = "var/mail/{user}"'))
    n = 12
    marks = [uuid.uuid4().hex for _ in range(n)]
    big = "".join(f"line {i} of a long body\r\n" for i in range(2000))
    threads = [
        threading.Thread(target=send, args=(d, ["alice@example.test"]), kwargs={"subject": m, "body": m + "\r\n" + big + m + "\r\n"})
        for m in marks
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mbox = d.dir / "var" / "mail" / "alice"
    msgs = wait_for(lambda: len(mbox_messages(mbox)) >= n and mbox_messages(mbox), "all messages in the mbox", d, timeout=30)
    assert len(msgs) == n
    for m in msgs:
        mark = re.search(r"Subject: (\w+)", m).group(1)
        assert m.count(mark) == 3, "a message was interleaved with another"
        assert m.endswith(mark + "\n\n")


def test_links_are_refused(daemon_factory, tmp_path):
    d = daemon_factory(config=local_config('mailbox = "mbox"\nmbox = "var/mail/{user}"'))
    target = tmp_path / "victim"
    target.write_text("")
    (d.dir / "var" / "mail").mkdir(parents=True, exist_ok=True)
    (d.dir / "var" / "mail" / "alice").symlink_to(target)
    send(d, ["alice@example.test"])
    d.wait_log_re(r"to=<alice@example.test>, .*status=deferred \(refusing to deliver to var/mail/alice: a symbolic link")
    assert target.read_text() == ""


@root_only
def test_a_full_disk_leaves_no_half_message(daemon_factory, tmp_path):
    spool = tmp_path / "small"
    spool.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(spool)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    d = daemon_factory(start=False, config=local_config(f'mailbox = "mbox"\nmbox = "{spool}/{{user}}"'))
    try:
        d.start()
        send(d, ["alice@example.test"], subject="small")
        mbox = spool / "alice"
        wait_for(lambda: mbox.exists() and "Subject: small" in mbox.read_text(), "the small message", d)
        before = mbox.read_bytes()
        send(d, ["alice@example.test"], subject="huge", body=("y" * 998 + "\r\n") * 400)
        d.wait_log_re(r"to=<alice@example.test>, .*status=deferred \(write .*alice: No space left")
        assert mbox.read_bytes() == before
    finally:
        d.stop()
        subprocess.run(["umount", "-l", str(spool)])


# ---------------------------------------------------------------- pipe


SCRIPT = r"""#!/usr/bin/python3
# Records its argv, identity and input; exits as a control file says.
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
user = sys.argv[1]
data = sys.stdin.buffer.read()
ctl = os.path.join(here, "exit-" + user)
code = int(open(ctl).read()) if os.path.exists(ctl) else 0
if os.path.exists(os.path.join(here, "sleep-" + user)):
    import subprocess
    child = subprocess.Popen(["sleep", "60"])
    with open(os.path.join(here, "pids-%d" % os.getpid()), "w") as f:
        f.write("%d %d" % (os.getpid(), child.pid))
    time.sleep(60)
if code:
    sys.stderr.write("refusing this one\nsecond line\n")
    sys.exit(code)
n = len([f for f in os.listdir(here) if f.startswith("msg-")])
with open(os.path.join(here, "msg-%d-%s.json" % (n, user)), "w") as f:
    json.dump({"argv": sys.argv[1:], "uid": os.getuid(), "gid": os.getgid(),
               "env": {k: os.environ.get(k) for k in ("SENDER", "RECIPIENT", "EXTENSION", "USER")},
               "data": data.decode("utf-8", "replace")}, f)
"""


@pytest.fixture
def pipe_dir():
    """A directory the command's user (nobody) can reach and write."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="postern-pipe-"))
    os.chmod(d, 0o755)
    script = d / "deliver.py"
    script.write_text(SCRIPT)
    os.chmod(script, 0o755)
    os.chown(d, NOBODY.pw_uid, NOBODY.pw_gid)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def alive(pid):
    """True if `pid` runs (a zombie does not)."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def pipe_config(pipe_dir, timeout="10s"):
    cmd = json.dumps([str(pipe_dir / "deliver.py"), "{user}", "{sender}", "{recipient}", "{tag}", "{domain}"])
    return local_config(f'mailbox = "pipe"\n[local.pipe]\ncommand = {cmd}\nuser = "nobody"\ntimeout = "{timeout}"\n')


def delivered(pipe_dir, user=None):
    out = []
    for f in sorted(pipe_dir.glob("msg-*.json"), key=lambda p: int(p.name.split("-")[1])):
        rec = json.loads(f.read_text())
        if user is None or rec["argv"][0] == user:
            out.append(rec)
    return out


@root_only
def test_pipe_gets_its_arguments_identity_and_message(daemon_factory, pipe_dir):
    d = daemon_factory(config=pipe_config(pipe_dir))
    out = d.cli("route", "alice@example.test").stdout
    assert f"(local, pipe {pipe_dir / 'deliver.py'})" in out, out
    send(d, ["alice+news@example.test"], body="From me\r\nbody\r\n")
    [rec] = wait_for(lambda: delivered(pipe_dir), "the command's record", d)
    assert rec["argv"] == ["alice", "sender@example.org", "alice+news@example.test", "news", "example.test"]
    assert (rec["uid"], rec["gid"]) == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert rec["env"] == {"SENDER": "sender@example.org", "RECIPIENT": "alice+news@example.test", "EXTENSION": "news", "USER": "alice"}
    data = rec["data"]
    assert data.startswith("Return-Path: <sender@example.org>\nDelivered-To: alice+news@example.test\nReceived: ")
    assert "\r" not in data and "\nFrom me\nbody\n" in data
    d.wait_log_re(rf"to=<alice\+news@example.test>, .*relay=local, .*dsn=2\.0\.0, status=sent \(delivered to command: {re.escape(str(pipe_dir))}")
    # The null sender: MAILER-DAEMON, as Postfix's pipe(8) passes it.
    send(d, ["bob@example.test"], sender="")
    [rec] = wait_for(lambda: delivered(pipe_dir, "bob"), "bob's record", d)
    assert rec["argv"][1] == "MAILER-DAEMON" and rec["argv"][3] == ""


@root_only
def test_pipe_exit_75_is_deferred_then_retried(daemon_factory, pipe_dir):
    d = daemon_factory(config=pipe_config(pipe_dir))
    (pipe_dir / "exit-alice").write_text("75")
    send(d, ["alice@example.test"], subject="tempfail")
    d.wait_log_re(
        r"to=<alice@example.test>, .*dsn=4\.3\.0, status=deferred \(temporary failure\. "
        r"Command output: refusing this one; second line\)"
    )
    assert delivered(pipe_dir) == []
    (pipe_dir / "exit-alice").unlink()
    [rec] = wait_for(lambda: delivered(pipe_dir), "the retried delivery", d)
    assert "Subject: tempfail" in rec["data"]
    wait_for(lambda: d.queue_files() == [], "the queue emptied", d)


@root_only
def test_pipe_exit_67_bounces_to_the_sender(daemon_factory, pipe_dir):
    d = daemon_factory(config=pipe_config(pipe_dir))
    (pipe_dir / "exit-alice").write_text("67")
    send(d, ["alice@example.test"], subject="unknown here", sender="bob@example.test")
    d.wait_log_re(r"to=<alice@example.test>, .*dsn=5\.1\.1, status=bounced \(user unknown\. Command output: refusing this one")
    # The report goes to bob through the same command.
    report = wait_for(lambda: [r for r in delivered(pipe_dir, "bob") if "multipart/report" in r["data"]], "bob's report", d)[0]
    assert report["argv"][1] == "MAILER-DAEMON"
    text = report["data"]
    assert "Status: 5.1.1" in text and "Final-Recipient: rfc822; alice@example.test" in text
    assert "user unknown" in text and "Subject: unknown here" in text
    wait_for(lambda: d.queue_files() == [], "the queue emptied", d)


@root_only
def test_pipe_timeout_kills_and_defers(daemon_factory, pipe_dir):
    d = daemon_factory(config=pipe_config(pipe_dir, timeout="2s"))
    (pipe_dir / "sleep-alice").write_text("")
    started = time.time()
    send(d, ["alice@example.test"], subject="slow")
    d.wait_log_re(r"to=<alice@example.test>, .*dsn=4\.3\.0, status=deferred \(Command time limit exceeded: ", timeout=20)
    assert time.time() - started < 15
    # Killed with what it started: the first attempt's processes are gone.
    first = min(pipe_dir.glob("pids-*"), key=lambda p: p.stat().st_mtime)
    for pid in map(int, first.read_text().split()):
        wait_for(lambda: not alive(pid), f"process {pid} still running", d, timeout=5)
    (pipe_dir / "sleep-alice").unlink()
    [rec] = wait_for(lambda: delivered(pipe_dir), "the retried delivery", d, timeout=20)
    assert "Subject: slow" in rec["data"]


def test_check_reports_bad_pipe_settings(daemon_factory):
    cases = [
        ('command = []\nuser = "nobody"', "local.pipe.command: is empty"),
        ('command = ["deliver.py"]\nuser = "nobody"', 'local.pipe.command[0]: "deliver.py" is not an absolute path'),
        ('command = ["/bin/true"]\nuser = "no-such-account"', 'local.pipe.user: no such user "no-such-account"'),
        ('command = ["/bin/true", "{rcpt}"]\nuser = "nobody"', "local.pipe.command[1]: unknown placeholder {rcpt}"),
    ]
    for i, (lines, want) in enumerate(cases):
        d = daemon_factory(name=f"c{i}", start=False, config=local_config(f'mailbox = "pipe"\n[local.pipe]\n{lines}\n'))
        p = d.cli("check", check=False)
        assert p.returncode != 0 and want in p.stdout + p.stderr, (lines, p.stdout + p.stderr)


@root_only
@pytest.mark.skipif(not os.access(LDA, os.X_OK), reason="dovecot-lda is not installed")
def test_pipe_into_dovecot_lda(daemon_factory, pipe_dir):
    """The real Dovecot LDA as the command, delivering into a Maildir (its
    own minimal config: no auth service, the user from $USER)."""
    vmail = pwd.getpwnam("vmail") if any(p.pw_name == "vmail" for p in pwd.getpwall()) else NOBODY
    mail = pipe_dir / "mail"
    mail.mkdir()
    os.chown(mail, vmail.pw_uid, vmail.pw_gid)
    conf = pipe_dir / "dovecot.conf"
    conf.write_text(
        "protocols =\nssl = no\nlog_path = /dev/stderr\nstats_writer_socket_path =\n"
        f"first_valid_uid = 1\nmail_location = maildir:{mail}/%n/Maildir\n"
    )
    cmd = json.dumps([LDA, "-c", str(conf), "-f", "{sender}", "-a", "{recipient}"])
    d = daemon_factory(
        config=local_config(f'mailbox = "pipe"\n[local.pipe]\ncommand = {cmd}\nuser = "{vmail.pw_name}"\n')
    )
    send(d, ["alice@example.test"], subject="via lda", body="From the LDA test\r\n")
    new = mail / "alice" / "Maildir" / "new"
    [f] = wait_for(lambda: new.is_dir() and list(new.iterdir()), "a file in the LDA's Maildir", d)
    text = f.read_text()
    assert "Subject: via lda" in text and "Delivered-To: alice@example.test" in text
    assert "Return-Path: <sender@example.org>" in text
    assert f.stat().st_uid == vmail.pw_uid
    d.wait_log_re(rf"to=<alice@example.test>, .*status=sent \(delivered to command: {re.escape(LDA)}\)")
