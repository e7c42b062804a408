"""The MTA core end to end: real binary, real sockets, smtplib and swaks."""

import os
import pathlib
import pwd
import shutil
import re
import signal
import smtplib
import socket
import subprocess
import time

import pytest

from conftest import (BASE_CONFIG, BIN, ROOT, free_port, message, plugin_path, quickstart_account, raw_session,
                      swaks)


def headers_of(path):
    text = path.read_bytes().decode(errors="replace")
    head, _, body = text.partition("\r\n\r\n")
    return head, body


@pytest.mark.parametrize("mode", ["journal", "direct", "spool"])
def test_delivery_into_maildir_with_trace_headers(daemon_factory, mode):
    """Every path: journal before the 250 and Maildir right after (the
    default), Maildir (fsynced) before the 250, and spool first, then the
    delivery manager."""
    daemon = daemon_factory(start=False)
    setting = {"journal": "", "direct": "journal = false",
               "spool": "direct_delivery = false"}[mode]
    daemon.config.write_text(daemon.config_text.replace(
        'retry_max = "1s"', f'retry_max = "1s"\n{setting}'))
    daemon.start()
    with daemon.smtp() as s:
        s.ehlo("client.test")
        code, resp = s.docmd("MAIL FROM:<sender@example.org>")
        assert code == 250
        s.rcpt("alice@example.test")
        code, resp = s.data(message(subject="hello alice"))
        assert code == 250
        qid = re.search(rb"queued as ([0-9A-F]{16})", resp).group(1).decode()
    [f] = daemon.wait_mail("alice")
    head, body = headers_of(f)
    lines = head.split("\r\n")
    assert lines[0] == "Return-Path: <sender@example.org>"
    assert lines[1] == "Delivered-To: alice@example.test"
    assert lines[2].startswith("Received: from client.test (")
    assert "[127.0.0.1])" in lines[2]
    assert f"by mx.example.test (Postern) with ESMTP id {qid}" in head
    assert "for <alice@example.test>;" in head
    assert "Subject: hello alice" in head
    assert body == "Hello.\r\n"
    # The queue is empty again and the log tells the story under the queue ID.
    if mode == "spool":
        daemon.wait_log(f"{qid}: removed")
    else:
        daemon.wait_log(f"{qid}: to=<alice@example.test>")
    status = {"journal": "journaled", "direct": "delivering", "spool": "queued"}[mode]
    daemon.wait_log(f"{qid}: client=localhost[127.0.0.1], from=<sender@example.org>, "
                    f"size={len(message(subject='hello alice'))}, nrcpt=1, proto=ESMTP ({status})")
    log = daemon.log_text()
    # One line per event, in the order they happened.
    assert log.index(f"{qid}: client=") < log.index(f"{qid}: to=<alice@example.test>")
    assert "status=sent" in log
    assert daemon.queue_files() == []


def test_swaks_delivery_and_pipelining(daemon):
    rc, out = swaks("--server", f"127.0.0.1:{daemon.port}", "--helo", "client.test",
                    "--from", "sender@example.org", "--to", "bob@example.test",
                    "--pipeline", "--header", "Subject: via swaks")
    assert rc == 0, out
    assert "PIPELINING" in out
    [f] = daemon.wait_mail("bob")
    head, _ = headers_of(f)
    assert "Subject: via swaks" in head
    assert "Delivered-To: bob@example.test" in head


def test_missing_message_id_and_date_are_added_only_when_missing(daemon):
    with daemon.smtp() as s:
        s.sendmail("sender@example.org", ["alice@example.test"], message(mid=False))
        s.sendmail("sender@example.org", ["bob@example.test"], message(mid=True))
    [a] = daemon.wait_mail("alice")
    head, _ = headers_of(a)
    assert re.search(r"^Message-ID: <[0-9A-F]{16}\.[0-9a-f]{8}@mx\.example\.test>\r?$", head, re.M)
    assert re.search(r"^Date: \w{3}, \d{2} \w{3} \d{4} ", head, re.M)
    [b] = daemon.wait_mail("bob")
    head, _ = headers_of(b)
    assert head.count("Message-ID:") == 1 and "@example.org>" in head
    assert head.count("Date:") == 1


def test_aliases_postmaster_abuse_case_insensitive(daemon):
    with daemon.smtp() as s:
        s.ehlo("client.test")
        for rcpt in ["postmaster@example.test", "PostMaster@EXAMPLE.test", "abuse@example.test"]:
            s.sendmail("sender@example.org", [rcpt], message(subject=rcpt))
        # RFC 5321 4.1.1.3: <postmaster> without a domain.
        assert s.docmd("MAIL FROM:<>")[0] == 250
        assert s.docmd("RCPT TO:<Postmaster>")[0] == 250
        assert s.data(message(subject="bare postmaster"))[0] == 250
    files = daemon.wait_mail("alice", count=4)
    assert len(files) == 4
    assert daemon.new_mail("bob") == []


def test_alias_to_several_users_and_duplicate_elimination(daemon):
    with daemon.smtp() as s:
        s.sendmail("sender@example.org", ["team@example.test", "alice@example.test"], message())
    daemon.wait_mail("alice")
    daemon.wait_mail("bob")
    time.sleep(0.3)
    assert len(daemon.new_mail("alice")) == 1, "alice must get one copy, not two"


def test_plus_tag_goes_to_existing_folder_else_inbox(daemon):
    for sub in ("cur", "new", "tmp"):
        (daemon.maildir("alice", ".news") / sub).mkdir(parents=True, exist_ok=True)
    with daemon.smtp() as s:
        s.sendmail("sender@example.org", ["alice+news@example.test"], message(subject="tagged"))
        s.sendmail("sender@example.org", ["alice+nofolder@example.test"], message(subject="untagged"))
    [f] = daemon.wait_mail("alice", folder=".news")
    head, _ = headers_of(f)
    assert "Delivered-To: alice+news@example.test" in head
    assert "Subject: tagged" in head
    [g] = daemon.wait_mail("alice")
    assert "Subject: untagged" in headers_of(g)[0]


def test_plus_tag_folders_are_made_on_demand_when_configured(daemon_factory):
    """local.create_tag_folders: `.tag` is made (tmp, cur, new) for a tag
    that is a plain folder name; any other tag goes to the INBOX."""
    d = daemon_factory(start=False)
    text = d.config_text.replace("[local]\n", "[local]\ncreate_tag_folders = true\n", 1)
    assert text != d.config_text
    d.config.write_text(text)
    d.start()
    with d.smtp() as s:
        s.sendmail("sender@example.org", ["alice+lists@example.test"], message(subject="to lists"))
        s.sendmail("sender@example.org", ["bob+a.b@example.test"], message(subject="dotted"))
    [f] = d.wait_mail("alice", folder=".lists")
    assert "Subject: to lists" in headers_of(f)[0]
    assert all((d.maildir("alice", ".lists") / sub).is_dir() for sub in ("tmp", "cur", "new"))
    # A dot would be a subfolder in Maildir++: not made, the INBOX instead.
    [g] = d.wait_mail("bob")
    assert "Subject: dotted" in headers_of(g)[0]
    assert not d.maildir("bob", ".a.b").exists()


def test_unknown_user_rejected_at_rcpt(daemon):
    with daemon.smtp() as s:
        s.ehlo("client.test")
        s.mail("sender@example.org")
        code, resp = s.rcpt("carol@example.test")
    assert code == 550
    assert resp.startswith(b"5.1.1 ")
    daemon.wait_log("reject: RCPT from")


def test_relay_refused_from_untrusted_address(daemon):
    with daemon.smtp(source="127.0.0.2") as s:
        s.ehlo("client.test")
        s.mail("sender@example.org")
        code, resp = s.rcpt("someone@dest.test")
        assert code == 554
        assert resp.startswith(b"5.7.1 ") and b"Relay access denied" in resp
        # Local recipients are still fine from anywhere.
        assert s.rcpt("alice@example.test")[0] == 250


def test_relay_from_trusted_network_is_accepted_and_queued(daemon):
    with daemon.smtp() as s:
        s.sendmail("alice@example.test", ["someone@dest.test"], message())
    daemon.wait_log("status=deferred (connect to mx2.dest.test[127.0.0.11]:9: Connection refused")
    out = daemon.cli("queue", "list").stdout
    assert "someone@dest.test" in out and "alice@example.test" in out
    assert "Connection refused" in out


def test_oversize_message_refused(daemon_factory):
    d = daemon_factory(smtp="max_message_size = 2048")
    with d.smtp() as s:
        s.ehlo("client.test")
        assert b"SIZE 2048" in s.ehlo_resp
        code, resp = s.docmd("MAIL FROM:<sender@example.org> SIZE=4096")
        assert code == 552 and resp.startswith(b"5.3.4")
        # Without SIZE=: the content itself is measured.
        assert s.docmd("MAIL FROM:<sender@example.org>")[0] == 250
        assert s.rcpt("alice@example.test")[0] == 250
        code, resp = s.data(message(body="x" * 70 + "\r\n") * 40)
        assert code == 552 and resp.startswith(b"5.3.4")
        # The session goes on.
        assert s.noop()[0] == 250
    time.sleep(0.3)
    assert d.new_mail("alice") == []


def test_memory_for_messages_in_transit_is_bounded(daemon_factory):
    # Two sessions each send a 150 KB message; together they exceed the
    # 250 KB that all sessions may hold in memory: the second is told to
    # try again later (452 4.3.1), the first goes through, and so does the
    # retry once memory is free again.
    d = daemon_factory(smtp="max_message_size = 200000\nmax_buffered = 250000")
    body = ("y" * 98 + "\r\n") * 1500
    with d.smtp() as a, d.smtp() as b:
        for s in (a, b):
            s.ehlo("client.test")
            assert s.mail("sender@example.org")[0] == 250
            assert s.rcpt("alice@example.test")[0] == 250
            assert s.docmd("DATA")[0] == 354
        # A's content arrives first and stays in memory (no end yet).
        a.send(message(subject="first", body=body))
        time.sleep(0.5)
        b.send(message(subject="second", body=body) + b".\r\n")
        code, resp = b.getreply()
        assert code == 452 and resp.startswith(b"4.3.1"), (code, resp)
        a.send(b".\r\n")
        assert a.getreply()[0] == 250
        # The session goes on and the retry is accepted.
        assert b.mail("sender@example.org")[0] == 250
        assert b.rcpt("alice@example.test")[0] == 250
        assert b.data(message(subject="second", body=body))[0] == 250
    d.wait_log("insufficient system storage")
    assert len(d.wait_mail("alice", count=2)) == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
def test_runs_as_the_configured_user_after_binding(daemon_factory):
    nobody = pwd.getpwnam("nobody")
    d = daemon_factory(config=BASE_CONFIG.replace(
        'shutdown_grace = "10s"', 'shutdown_grace = "10s"\nuser = "nobody"'))
    d.wait_log("running as user nobody")
    status = open(f"/proc/{d.proc.pid}/status").read()
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    gids = next(line for line in status.splitlines() if line.startswith("Gid:")).split()[1:]
    assert uids == [str(nobody.pw_uid)] * 4, status
    assert gids == [str(nobody.pw_gid)] * 4, status
    # Every thread, including those started before the drop (journal).
    for task in pathlib.Path(f"/proc/{d.proc.pid}/task").iterdir():
        t = (task / "status").read_text()
        assert f"Uid:\t{nobody.pw_uid}\t" in t, t
    # Mail still flows, and what Postern writes belongs to that user.
    with d.smtp() as s:
        s.ehlo("client.test")
        s.mail("sender@example.org")
        assert s.rcpt("alice@example.test")[0] == 250
        assert s.data(message(subject="unprivileged"))[0] == 250
    files = d.wait_mail("alice")
    assert files[0].stat().st_uid == nobody.pw_uid
    assert (d.dir / "var" / "spool").stat().st_uid == nobody.pw_uid
    # The journal (and any segment it makes) belongs to that user.
    journal = d.dir / "var" / "spool" / "journal"
    assert all(p.stat().st_uid == nobody.pw_uid for p in [journal, *journal.iterdir()])
    # Stopping cleans up as that user too.
    assert d.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
def test_root_never_works_inside_the_accounts_spool(daemon_factory, tmp_path):
    """The spool belongs to server.user, who can plant links in it. At the
    next start, as root, nothing may follow them: no file of root's
    deleted (recovery of incoming/), none overwritten (a self-signed key
    written through a link), none given to the account (the chown walk)."""
    nobody = pwd.getpwnam("nobody")
    d = daemon_factory(config=BASE_CONFIG.replace(
        'shutdown_grace = "10s"', 'shutdown_grace = "10s"\nuser = "nobody"'))
    d.wait_log("running as user nobody")
    assert d.stop() == 0
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o755)
    (victim / "important").write_text("keep me")
    (victim / "target").write_text("precious")
    spool = d.dir / "var" / "spool"
    # What the account could do in its own spool:
    (spool / "incoming").rename(spool / "incoming.old")
    (spool / "incoming").symlink_to(victim)
    tls = spool / "tls"
    (tls / "selfsigned.crt").unlink()
    (tls / "selfsigned.key.tmp").symlink_to(victim / "target")
    (spool / "queue" / "evil").symlink_to(victim)
    for p in [spool / "incoming", tls / "selfsigned.key.tmp", spool / "queue" / "evil"]:
        os.lchown(p, nobody.pw_uid, nobody.pw_gid)
    d.start(wait=False)
    deadline = time.time() + 20
    while time.time() < deadline and d.proc.poll() is None and "running as user" not in d.log_text()[-2000:]:
        time.sleep(0.1)
    time.sleep(1)
    d.stop()
    assert (victim / "important").read_text() == "keep me"
    assert (victim / "target").read_text() == "precious"
    assert victim.stat().st_uid == 0
    assert (victim / "important").stat().st_uid == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")
def test_full_spool_costs_a_4xx_and_leaves_nothing_behind(daemon_factory, tmp_path):
    # The spool on a 1 MiB file system: a message that does not fit gets a
    # 451, and its partial file goes, so the next (small) one fits.
    spool = tmp_path / "spool"
    spool.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(spool)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        d = daemon_factory(start=False)
        d.config.write_text(d.config_text.replace('spool_dir = "var/spool"', f'spool_dir = "{spool}"').replace(
            'retry_max = "1s"', f'retry_max = "1s"\ndirect_delivery = false'))
        d.start()
        big = message(subject="too big") + (b"y" * 998 + b"\r\n") * 1500
        with d.smtp() as s:
            s.ehlo("client.test")
            assert s.mail("a@example.org")[0] == 250
            assert s.rcpt("alice@example.test")[0] == 250
            code, resp = s.data(big)
            assert code == 451, (code, resp)
            for i in range(3):
                assert s.sendmail("a@example.org", ["alice@example.test"], message(subject=f"small {i}")) == {}
        assert len(d.wait_mail("alice", count=3)) == 3
        assert list((spool / "incoming").iterdir()) == []
        assert d.stop() == 0
    finally:
        subprocess.run(["umount", "-l", str(spool)])


def test_too_many_recipients(daemon_factory):
    d = daemon_factory(smtp="max_recipients = 2")
    with d.smtp() as s:
        s.ehlo("client.test")
        s.mail("sender@example.org")
        assert s.rcpt("alice@example.test")[0] == 250
        assert s.rcpt("bob@example.test")[0] == 250
        code, resp = s.rcpt("postmaster@example.test")
        assert code == 452 and resp.startswith(b"4.5.3")
        assert s.data(message())[0] == 250
    d.wait_mail("alice")
    d.wait_mail("bob")


def journal_bytes(d):
    """Everything in the journal's segments (one may go while we read)."""
    j = d.dir / "var" / "spool" / "journal"
    out = b""
    for p in (j.iterdir() if j.is_dir() else []):
        try:
            out += p.read_bytes()
        except FileNotFoundError:
            pass
    return out


@pytest.mark.parametrize("mode", ["journal", "spool"])
def test_kill9_right_after_250_then_restart_delivers(daemon_factory, mode):
    d = daemon_factory(start=False)
    if mode == "spool":
        d.config.write_text(d.config_text.replace(
            'retry_max = "1s"', 'retry_max = "1s"\ndirect_delivery = false'))
    d.start()
    # Block alice's mailbox so the message is certainly still queued at the kill.
    mail_root = d.dir / "var" / "mail" / "alice"
    mail_root.parent.mkdir(parents=True, exist_ok=True)
    mail_root.write_text("not a directory")
    with d.smtp() as s:
        code, resp = s.docmd("EHLO client.test")
        s.mail("sender@example.org")
        s.rcpt("alice@example.test")
        code, resp = s.data(message(subject="durable"))
        assert code == 250
        d.kill9()
    qid = re.search(rb"queued as ([0-9A-F]{16})", resp).group(1).decode()
    if mode == "spool":
        assert d.queue_files() == [qid]
    else:
        # In the journal, or (if its delivery thread was quicker than the
        # kill) moved to the spool for retry.
        assert qid.encode() in journal_bytes(d) or d.queue_files() == [qid]
    mail_root.unlink()
    d.start()
    [f] = d.wait_mail("alice")
    assert "Subject: durable" in headers_of(f)[0]
    time.sleep(0.5)
    assert len(d.new_mail("alice")) == 1, "delivered once, not twice"
    if d.queue_files() or mode == "spool":
        d.wait_log(f"{qid}: removed")


def test_journal_delivers_again_what_a_power_loss_took(daemon_factory):
    """kill -9 keeps the page cache, so the power loss is simulated: after
    the kill, copies the journal had not synced yet are removed or cut
    short. The next start delivers those again from the journal, keeps the
    intact ones (also one the user already moved to cur/), and doubles
    nothing."""
    d = daemon_factory(start=False)
    d.config.write_text(d.config_text.replace(
        'retry_max = "1s"', 'retry_max = "1s"\njournal_seal_idle = "1h"'))
    d.start()
    subjects = [f"lost-{i}" for i in range(5)]
    with d.smtp() as s:
        for subj in subjects:
            assert s.sendmail("sender@example.org", ["bob@example.test"], message(subject=subj)) == {}
    files = sorted(d.wait_mail("bob", count=len(subjects)))
    # Delivered, waiting for the bulk sync: the queue listing counts them.
    out = d.cli("queue", "list").stdout
    assert out.startswith("Mail queue is empty\n")
    assert "-- 5 messages in the journal (1 segment)" in out
    d.kill9()
    assert journal_bytes(d).count(b"lost-") == len(subjects)
    # ... and, the daemon down, lists them one by one on request.
    out = d.cli("queue", "list", "--journal").stdout
    starred = [line.split()[0] for line in out.splitlines() if re.match(r"^\S+\* ", line)]
    assert len(starred) == len(subjects), out
    assert out.count("bob@example.test") == len(subjects)
    assert "in 5 Requests." in out
    content = {f.name: f.read_bytes() for f in files}
    files[0].unlink()
    files[1].write_bytes(content[files[1].name][:10])
    seen = d.maildir("bob") / "cur" / (files[2].name + ":2,S")
    files[2].rename(seen)
    d.start()
    d.wait_log(f"journal: delivering {len(subjects)} messages left by an earlier run")
    d.wait_log("journal: recovery done (5 messages, 0 spooled for retry")
    assert "damaged by a crash" in d.log_text()
    new = d.new_mail("bob")
    assert sorted(f.name for f in new) == sorted(f.name for f in files if f != files[2])
    for f in new:
        assert f.read_bytes() == content[f.name]
    assert seen.read_bytes() == content[files[2].name]
    # Recovered, synced and forgotten; stopping leaves nothing either.
    assert journal_bytes(d).count(b"lost-") == 0
    with d.smtp() as s:
        assert s.sendmail("sender@example.org", ["bob@example.test"], message(subject="last")) == {}
    assert d.stop() == 0
    assert journal_bytes(d) == b""
    assert len(d.new_mail("bob")) == len(subjects)


@pytest.mark.parametrize("sync,direct,journal", [
    ("file", True, True), ("file", True, False), ("filesystem", True, False),
    ("filesystem", False, False)])
def test_kill9_immediately_after_250_many_messages_nothing_lost_or_doubled(
        daemon_factory, sync, direct, journal):
    d = daemon_factory(start=False)
    d.config.write_text(d.config_text.replace(
        'retry_max = "1s"', f'retry_max = "1s"\nsync = "{sync}"\n'
        f'direct_delivery = {str(direct).lower()}\njournal = {str(journal).lower()}'))
    d.start()
    subjects = [f"burst-{i}" for i in range(20)]
    with d.smtp() as s:
        for subj in subjects:
            assert s.sendmail("sender@example.org", ["bob@example.test"], message(subject=subj)) == {}
        d.kill9()
    # The kill leaves the journal's last segment (sealed only after 100 ms
    # without appends) with copies already in the mailbox.
    left = journal_bytes(d).count(b"burst-")
    d.start()
    files = d.wait_mail("bob", count=len(subjects))
    if left:
        d.wait_log(f"journal: delivering {left} messages left by an earlier run")
        d.wait_log("journal: recovery done")
    time.sleep(0.5)
    files = d.new_mail("bob")
    got = sorted(re.search(r"Subject: (burst-\d+)", f.read_text()).group(1) for f in files)
    assert got == sorted(subjects)
    if journal:
        # Recovered, synced and forgotten.
        assert journal_bytes(d).count(b"burst-") == 0


def test_kill9_during_data_leaves_nothing_half_delivered(daemon_factory):
    d = daemon_factory()
    s = socket.create_connection(("127.0.0.1", d.port))
    s.recv(1024)
    s.sendall(b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    time.sleep(0.3)
    s.sendall(b"Subject: half\r\n\r\nfirst part\r\n")
    time.sleep(0.2)
    d.kill9()
    s.close()
    d.start()
    time.sleep(0.5)
    assert d.new_mail("alice") == []
    assert d.queue_files() == []
    assert list((d.dir / "var" / "spool" / "incoming").iterdir()) == []


def test_failed_delivery_stays_queued_and_is_retried(daemon_factory):
    d = daemon_factory(retry="1s")
    blocker = d.dir / "var" / "mail" / "bob"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("in the way")
    with d.smtp() as s:
        s.sendmail("sender@example.org", ["bob@example.test"], message(subject="retry me"))
    d.wait_log("status=deferred")

    def queue_settles(done):
        # The log line goes out before the queue file records the attempt
        # (and, once delivered, before it is removed): poll, bounded.
        out = ""
        for _ in range(100):
            out = d.cli("queue", "list").stdout
            if done(out):
                return out
            time.sleep(0.1)
        raise AssertionError(out)

    queue_settles(lambda out: "bob@example.test" in out and "attempt" in out)
    blocker.unlink()
    [f] = d.wait_mail("bob", timeout=15)
    assert "Subject: retry me" in f.read_text()
    queue_settles(lambda out: out.strip() == "Mail queue is empty")
    assert len(d.new_mail("bob")) == 1


def test_smtp_smuggling_is_refused_and_nothing_smuggled(daemon):
    payload = (
        b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
        b"Subject: outer\r\n\r\nouter body\n.\r\n"
        b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nsmuggled\r\n.\r\nQUIT\r\n"
    )
    out = raw_session(daemon.port, payload)
    assert "521 5.5.2" in out
    assert "queued as" not in out
    time.sleep(0.3)
    assert daemon.new_mail("alice") == [] and daemon.new_mail("bob") == []
    daemon.wait_log("possible SMTP smuggling")


@pytest.mark.parametrize("ending", [b"\r\n.\n", b"\r.\r\n", b"\n.\n"])
def test_other_fake_end_markers_refused(daemon, ending):
    payload = (b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
               b"Subject: x\r\n\r\nbody" + ending + b"QUIT\r\n")
    out = raw_session(daemon.port, payload)
    assert "521 5.5.2" in out and "queued as" not in out


def test_pipelined_commands_answered_in_order(daemon):
    payload = (b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<nobody@example.test>\r\n"
               b"RCPT TO:<alice@example.test>\r\nDATA\r\n")
    s = socket.create_connection(("127.0.0.1", daemon.port))
    s.recv(1024)
    s.sendall(payload)
    buf = b""
    while b"354 " not in buf:
        buf += s.recv(4096)
    codes = [l[:3] for l in buf.decode().split("\r\n") if l and l[3] == " "]
    assert codes == ["250", "250", "550", "250", "354"]
    s.sendall(b"Subject: piped\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    rest = b""
    while b"221 " not in rest:
        rest += s.recv(4096)
    assert b"250 2.0.0 Ok: queued as" in rest
    s.close()
    daemon.wait_mail("alice")


def test_every_refused_command_is_logged(daemon):
    payload = (b"EHLO client.test\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nVRFY alice\r\n"
               b"AUTH PLAIN AGFsaWNlAHg=\r\nMAIL FROM:<a@example.org>\r\nMAIL FROM:<b@example.org>\r\n"
               b"DATA\r\nQUIT\r\n")
    out = raw_session(daemon.port, payload)
    codes = [l[:3] for l in out.split("\r\n") if len(l) > 3 and l[3] == " "]
    assert codes == ["220", "250", "503", "503", "502", "502", "250", "503", "554", "221"], out
    daemon.wait_log_re(r"NOQUEUE: reject: RCPT from .*: 503 5\.5\.1 Error: need MAIL command")
    daemon.wait_log_re(r"NOQUEUE: reject: DATA from .*: 503 5\.5\.1")
    daemon.wait_log_re(r"NOQUEUE: reject: VRFY from .*: 502 5\.5\.1")
    daemon.wait_log_re(r"NOQUEUE: reject: AUTH from .*: 502 5\.5\.1")
    daemon.wait_log_re(r"\w+: reject: MAIL from .*: 503 5\.5\.1 Error: nested MAIL command")
    daemon.wait_log_re(r"\w+: reject: DATA from .*: 554 5\.5\.1 Error: no valid recipients")


def test_envelope_edge_cases(daemon):
    # A quoted local part names the same mailbox (RFC 5322 3.2.4), also
    # postmaster's; `MAIL FROM:` with nothing is a syntax error, not <>; a
    # parameter twice is refused; HELP names only what is offered.
    with daemon.smtp() as s:
        s.ehlo("client.test")
        code, resp = s.docmd("MAIL FROM:")
        assert code == 501 and resp.startswith(b"5.5.4"), (code, resp)
        assert s.docmd("MAIL FROM:<a@example.org> SIZE=10 SIZE=20")[0] == 501
        code, resp = s.docmd("HELP")
        assert code == 214 and b"VRFY" not in resp
        assert s.mail("a@example.org")[0] == 250
        assert s.rcpt('"alice"@example.test')[0] == 250
        assert s.rcpt('"postmaster"@example.test')[0] == 250
        assert s.data(message(subject="quoted"))[0] == 250
    daemon.wait_mail("alice")


def test_received_header_stays_within_line_limits(daemon):
    # The HELO name is the client's word: a 2000-character one must not
    # make a 2000-character header line, nor raw UTF-8 in a non-UTF-8 mail.
    with daemon.smtp() as s:
        s.ehlo("x" * 2000)
        assert s.sendmail("a@example.org", ["bob@example.test"], message(subject="long helo")) == {}
    [f] = daemon.wait_mail("bob")
    head = f.read_bytes().split(b"\r\n\r\n")[0]
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    assert b"from " + b"x" * 255 + b"... (" in head


def test_content_trickled_byte_by_byte_is_cut_off(daemon_factory):
    # Each read comes well within data_timeout, but the content as a whole
    # arrives slower than min_data_rate: the session ends with a 421 and
    # nothing is delivered (Postfix's smtpd_min_data_rate).
    d = daemon_factory(smtp='data_timeout = "2s"\nmin_data_rate = 1000')
    s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    s.recv(1024)
    s.sendall(b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    buf = b""
    while b"354 " not in buf:
        buf += s.recv(4096)
    started = time.monotonic()
    reply = b""
    try:
        for _ in range(40):
            s.sendall(b"x")
            time.sleep(0.25)
            s.setblocking(False)
            try:
                reply += s.recv(4096)
            except BlockingIOError:
                pass
            s.setblocking(True)
            if reply:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    elapsed = time.monotonic() - started
    assert b"421 4.4.2" in reply, reply
    assert elapsed > 1.5, elapsed
    s.close()
    d.wait_log("timeout after DATA")
    # A message sent at a normal pace is not affected.
    with d.smtp() as c:
        assert c.sendmail("a@example.org", ["alice@example.test"], message(subject="normal")) == {}
    [f] = d.wait_mail("alice")
    assert "normal" in f.read_text()


def test_bdat_chunking(daemon):
    msg = message(subject="chunked")
    part1, part2 = msg[:20], msg[20:]
    payload = (b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\n"
               + b"BDAT %d\r\n" % len(part1) + part1
               + b"BDAT %d LAST\r\n" % len(part2) + part2 + b"QUIT\r\n")
    out = raw_session(daemon.port, payload)
    assert "CHUNKING" in out
    assert f"250 2.0.0 {len(part1)} octets received" in out
    assert "queued as" in out
    [f] = daemon.wait_mail("alice")
    assert f.read_bytes().endswith(msg)
    # A last chunk that ends in a CR leaves it bare: refused, not stored.
    bad = b"Subject: cr\r\n\r\nbody\r"
    payload = (b"EHLO c.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\n"
               + b"BDAT %d LAST\r\n" % len(bad) + bad + b"QUIT\r\n")
    out = raw_session(daemon.port, payload)
    assert "550 5.6.0" in out and "queued as" not in out, out


def test_helo_required_and_strict_envelopes(daemon_factory):
    d = daemon_factory(smtp="helo_required = true\nstrict_envelopes = true")
    out = raw_session(d.port, b"MAIL FROM:<a@example.org>\r\nHELO c.test\r\nMAIL FROM:a@example.org\r\n"
                               b"MAIL FROM:<a@example.org>\r\nQUIT\r\n")
    lines = [l for l in out.split("\r\n") if l]
    assert lines[1].startswith("503 5.5.1")
    assert lines[2].startswith("250 ")
    assert lines[3].startswith("501 5.1.7")
    assert lines[4].startswith("250 2.1.0")
    # Lax default: no brackets is fine.
    d2 = daemon_factory(name="lax")
    out = raw_session(d2.port, b"MAIL FROM:a@example.org\r\nQUIT\r\n")
    assert "250 2.1.0" in out


def test_error_limit_disconnects(daemon_factory):
    d = daemon_factory(smtp="max_errors = 3")
    out = raw_session(d.port, b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")
    assert out.count("500 5.5.2") == 2
    assert "421 4.7.0" in out and "250 2.0.0" not in out


def test_line_too_long(daemon):
    out = raw_session(daemon.port, b"NOOP " + b"x" * 5000 + b"\r\nNOOP\r\n")
    assert "500 5.5.2 Error: line too long" in out
    assert "250 2.0.0 Ok" in out


def test_vrfy_disabled_by_default_and_enabled_by_config(daemon, daemon_factory):
    out = raw_session(daemon.port, b"VRFY alice\r\n")
    assert "502 5.5.1" in out
    d = daemon_factory(name="vrfy", smtp="vrfy = true")
    out = raw_session(d.port, b"VRFY <alice@example.test>\r\nVRFY <carol@example.test>\r\n")
    assert "250 2.0.0 <alice@example.test>" in out
    assert "550 5.1.1" in out


def test_idle_timeout(daemon_factory):
    d = daemon_factory(smtp='idle_timeout = "1s"')
    s = socket.create_connection(("127.0.0.1", d.port))
    s.settimeout(5)
    s.recv(1024)
    t0 = time.time()
    data = s.recv(1024)
    assert b"421 4.4.2" in data
    assert time.time() - t0 < 4
    s.close()


def test_connection_limit_per_ip(daemon_factory):
    d = daemon_factory(smtp="max_connections_per_ip = 2")
    # The start-up probe's session holds a slot until the daemon sees it
    # closed; under load that can take a moment.
    d.wait_log("disconnect from")
    a = d.smtp()
    b = d.smtp()
    c = socket.create_connection(("127.0.0.1", d.port))
    c.settimeout(5)
    assert c.recv(1024).startswith(b"421 4.7.0")
    # Another address is not affected.
    with d.smtp(source="127.0.0.2") as other:
        assert other.noop()[0] == 250
    a.quit()
    b.quit()
    c.close()
    # Slots come back as the sessions end.
    deadline = time.time() + 10
    while True:
        try:
            with d.smtp() as again:
                assert again.noop()[0] == 250
            break
        except smtplib.SMTPConnectError:
            assert time.time() < deadline, "slots not released after QUIT"
            time.sleep(0.05)


def test_sigterm_drains_sessions(daemon_factory):
    d = daemon_factory()
    s = d.smtp()
    s.ehlo("client.test")
    s.mail("sender@example.org")
    s.rcpt("alice@example.test")
    d.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    # The transaction in progress completes...
    assert s.data(message(subject="in flight"))[0] == 250
    # ...and the idle session is then told to go.
    with pytest.raises(smtplib.SMTPServerDisconnected):
        s.noop()
        s.noop()
    assert d.proc.wait(timeout=15) == 0
    d.wait_log("postern stopped")
    d.start()
    d.wait_mail("alice")


def test_check_reports_unknown_keys_and_bad_values(daemon_factory, tmp_path):
    d = daemon_factory(start=False)
    ok = d.cli("check")
    assert ok.returncode == 0 and ": ok" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(d.config_text.replace("[local]", "[local]\nmailbox_size = 5"))
    p = subprocess.run([str(BIN), "check", "--config", str(bad)], capture_output=True, text=True)
    assert p.returncode == 1
    assert "unknown field `mailbox_size`" in p.stderr
    bad.write_text(d.config_text.replace('postmaster = "alice"', 'postmaster = "nobody"'))
    p = subprocess.run([str(BIN), "check", "--config", str(bad)], capture_output=True, text=True)
    assert p.returncode == 1 and "aliases.postmaster" in p.stderr


def test_quickstart_config_is_valid():
    quickstart_account()
    p = subprocess.run([str(BIN), "check", "--config", str(ROOT / "examples" / "quickstart.toml")],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr


def test_quickstart_as_shipped_does_what_the_readme_says(daemon_factory):
    """examples/quickstart.toml itself (ports moved, paths made absolute):
    the README's swaks lines, with their replies."""
    sub, smtps = free_port(), free_port()
    text = (ROOT / "examples" / "quickstart.toml").read_text()
    text = text.replace("{", "{{").replace("}", "}}")
    text = (text.replace('"127.0.0.1:2525"', '"127.0.0.1:{port}"')
                .replace('"127.0.0.1:5870"', f'"127.0.0.1:{sub}"')
                .replace('"127.0.0.1:4650"', f'"127.0.0.1:{smtps}"')
                .replace('path = "examples/', f'path = "{ROOT}/examples/')
                .replace('path = "target/', f'path = "{ROOT}/target/'))
    assert "{port}" in text and str(ROOT) in text
    # As shipped, it runs as server.user `postern`, with the plugin cache
    # where it is by default: in the spool, which the account owns (root
    # once refused that, so the quickstart did not start).
    account = pwd.getpwnam(quickstart_account())
    assert "cache_dir" not in text
    d = daemon_factory(config=text)
    d.wait_log("running as user postern")
    rc, out = swaks("--server", f"127.0.0.1:{d.port}", "--helo", "client.test",
                    "--from", "someone@example.org", "--to", "alice+news@example.test")
    assert rc == 0, out
    [f] = d.wait_mail("alice")
    assert "Delivered-To: alice+news@example.test" in f.read_text()
    assert f.stat().st_uid == account.pw_uid
    rc, out = swaks("--server", f"127.0.0.1:{d.port}", "--from", "spam@blocked.test",
                    "--to", "alice@example.test")
    assert rc != 0 and "<** 554 5.7.1" in out, out
    rc, out = swaks("--server", f"127.0.0.1:{sub}", "--tls", "--auth", "PLAIN",
                    "--auth-user", "alice@example.test", "--auth-password", "alice-secret",
                    "--from", "alice@example.test", "--to", "friend@dest.test")
    assert rc == 0 and "queued as" in out, out
    listing = d.cli("queue", "list").stdout
    assert "friend@dest.test" in listing
    # Started again (the spool and its cache now the account's), and
    # checked: the same.
    d.stop()
    assert d.cli("check").returncode == 0
    d.start()
    d.wait_log("running as user postern")
    rc, out = swaks("--server", f"127.0.0.1:{d.port}", "--from", "spam@blocked.test",
                    "--to", "alice@example.test")
    assert rc != 0 and "<** 554 5.7.1" in out, out


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
def test_check_as_root_checks_what_the_account_will_read(daemon_factory):
    # `postern check` run by root becomes server.user as the daemon does:
    # it uses the account's plugin cache (a Python plugin takes seconds to
    # compile), and what the account cannot read fails the check, not the
    # next start.
    # The account's own cache and key (in its spool, the default).
    config = BASE_CONFIG.replace('cache_dir = "{cache}"', 'cache_dir = "cache"').replace(
        'cache_key = "{cache}.key"\n', '').replace(
        'shutdown_grace = "10s"', 'shutdown_grace = "10s"\nuser = "nobody"')
    access = f"""
[[plugin]]
name = "access"
path = "{plugin_path('access')}"
[[chain.rcpt]]
plugin = "access"
config.sender = {{ "blocked.test" = "REJECT" }}
"""
    d = daemon_factory(config=config, extra=access)
    d.wait_log("running as user nobody")
    assert d.stop() == 0
    assert list((d.dir / "cache").glob("*.cwasm"))
    p = d.cli("check")
    assert "not loading plugin cache file" not in p.stderr, p.stderr
    assert "1 plugin(s)" in p.stdout

    secret = d.dir / "var" / "passwd"
    secret.write_text("")
    secret.chmod(0o600)
    d.config.write_text(d.config_text + '\n[[auth]]\nname = "local"\nbackend = "passwd"\npath = "var/passwd"\n')
    p = d.cli("check", check=False)
    assert p.returncode == 1, p.stdout
    assert "var/passwd" in p.stderr, p.stderr

    # A system directory as the spool is refused by check as by a start.
    d.config.write_text(d.config_text.replace('spool_dir = "var/spool"', 'spool_dir = "/var/spool"'))
    p = d.cli("check", check=False)
    assert p.returncode == 1 and "refusing to give that tree to server.user" in p.stderr, p.stderr

    # Certificates are read (as root, as the daemon reads them) too.
    d.config.write_text(d.config_text + '\n[tls]\ncertificate = "/etc/hostname"\nkey = "/etc/hostname"\n')
    p = d.cli("check", check=False)
    assert p.returncode == 1 and "TLS set-up failed" in p.stderr, p.stderr

    # Without a default certificate the daemon reads SNI keys as the
    # account; check too, and it makes no self-signed certificate.
    key = d.dir / "sni.key"
    key.write_text("not a key, and private")
    key.chmod(0o600)
    d.config.write_text(d.config_text + f'\n[[tls.sni]]\nnames = ["mx.test"]\ncertificate = "/etc/hostname"\nkey = "{key}"\n')
    shutil.rmtree(d.dir / "var" / "spool" / "tls", ignore_errors=True)
    p = d.cli("check", check=False)
    assert p.returncode == 1 and f"cannot read key {key}" in p.stderr, p.stderr
    assert not (d.dir / "var" / "spool" / "tls").exists()


def test_content_cannot_continue_or_forge_postern_s_own_fields(daemon):
    # A first line that continues nothing would otherwise continue the
    # Received: field Postern prepends; Return-Path and X-Postern-Score are
    # only ever Postern's.
    forged = (b"\t(Authenticated sender: ceo@example.test) by mx.example.test with ESMTPSA\r\n"
              b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
              b"\r\n"
              b"body one\r\n")
    normal = (b"Return-Path: <forged@example.org>\r\n"
              b"Subject: two\r\n"
              b"X-Postern-Score: -50.00 (WHITELISTED=-50.00)\r\n"
              b"Message-ID: <two@example.org>\r\n"
              b"\r\n"
              b"body two\r\n")
    with daemon.smtp() as s:
        s.ehlo("client.test")
        s.sendmail("sender@example.org", ["alice@example.test"], forged)
        s.sendmail("sender@example.org", ["alice@example.test"], normal)
    files = daemon.wait_mail("alice", count=2)
    texts = sorted((f.read_bytes() for f in files), key=lambda t: b"body two" in t)
    head, _, body = texts[0].partition(b"\r\n\r\n")
    assert b"Authenticated sender" not in head, head
    assert body.startswith(b"\t(Authenticated sender: ceo@example.test)"), body
    # No header section of its own: Postern's Date: and Message-ID: are added.
    assert re.search(rb"(?m)^Date: ", head) and re.search(rb"(?m)^Message-ID: ", head), head
    head, _, _ = texts[1].partition(b"\r\n\r\n")
    assert head.count(b"Return-Path:") == 1 and head.startswith(b"Return-Path: <sender@example.org>"), head
    assert b"X-Postern-Score" not in head and b"Subject: two" in head, head
    daemon.wait_log("removed 2 Return-Path/X-Postern-Score field(s)")


def test_ipv4_clients_of_an_ipv6_socket_are_ipv4_clients(daemon_factory):
    # A dual-stack socket sees IPv4 clients as ::ffff:a.b.c.d. Bound to
    # the mapped loopback address here (tests listen on loopback only),
    # which shows the same. The client is 127.0.0.1 for its PTR check (the
    # resolver answers localhost for 127/8), its log line and Received:.
    d = daemon_factory(config=BASE_CONFIG.replace('address = "127.0.0.1:{port}"',
                                                  'address = "[::ffff:127.0.0.1]:{port}"'))
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as s:
        s.ehlo("client.test")
        s.sendmail("sender@example.org", ["alice@example.test"], message(subject="mapped"))
    [f] = d.wait_mail("alice")
    head, _ = headers_of(f)
    assert "Received: from client.test (localhost [127.0.0.1])" in head, head
    assert "connect from localhost[127.0.0.1] on mx" in d.log_text()
