"""The queue file's recipient records (issue 13, item 0): DSN parameters
parsed and kept, per-recipient outcomes durable, version 1 queue files read
after an upgrade, and `postern queue list --json` in postqueue -j's shape."""

import json
import struct
import time
import zlib

from conftest import message


def envelope_of(path):
    """The envelope JSON of a queue file: content, envelope, then a trailer
    of content length, envelope length (u64 LE), CRC-32 and the magic."""
    data = path.read_bytes()
    assert data.endswith(b"PSTRNQ01")
    content_len, env_len = struct.unpack("<QQ", data[-28:-12])
    return json.loads(data[content_len:content_len + env_len])


def queue_json(daemon):
    out = daemon.cli("queue", "list", "--json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wait_queue(daemon, pred, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        entries = queue_json(daemon)
        if pred(entries):
            return entries
        time.sleep(0.1)
    raise AssertionError(f"queue never matched: {entries}\n{daemon.log_text()[-2000:]}")


def attempts_of(daemon, address):
    """Delivery attempts logged for `address` so far."""
    return daemon.log_text().count(f"to=<{address}>, orig_to=")


def wait_more_attempts(daemon, address, more, timeout=10.0):
    """Waits until `address` has had `more` attempts beyond now."""
    n = attempts_of(daemon, address)
    deadline = time.time() + timeout
    while attempts_of(daemon, address) < n + more and time.time() < deadline:
        time.sleep(0.1)
    assert attempts_of(daemon, address) >= n + more, daemon.log_text()[-3000:]


def test_dsn_parameters_are_parsed_and_kept_with_each_recipient(daemon):
    with daemon.smtp() as s:
        s.ehlo("client.test")
        assert s.docmd("MAIL FROM:<sender@example.org> RET=HDRS ENVID=env+2B1")[0] == 250
        code, _ = s.docmd("RCPT TO:<far@dest.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Far+2Bx@dest.test")
        assert code == 250
        assert s.docmd("RCPT TO:<other@dest.test>")[0] == 250
        code, _ = s.data(message())
        assert code == 250
    daemon.wait_log("status=deferred (connect to mx2.dest.test[127.0.0.11]:9: Connection refused")
    [qid] = daemon.queue_files()
    env = envelope_of(daemon.dir / "var" / "spool" / "queue" / qid)
    assert env["version"] == 2
    assert env["ret"] == "hdrs" and env["envid"] == "env+1"
    by_address = {r["address"]: r for r in env["recipients"]}
    far = by_address["far@dest.test"]
    assert far["orcpt"] == "rfc822;Far+x@dest.test"
    assert far["notify"] == {"success": True, "failure": True, "delay": False}
    # No NOTIFY given: none kept (the default applies), no ORCPT invented.
    assert "notify" not in by_address["other@dest.test"]
    assert "orcpt" not in by_address["other@dest.test"]


def test_malformed_dsn_parameters_are_501_5_5_4(daemon):
    with daemon.smtp() as s:
        s.ehlo("client.test")
        code, resp = s.docmd("MAIL FROM:<sender@example.org> RET=MOST")
        assert code == 501 and resp.startswith(b"5.5.4"), resp
        assert s.docmd("MAIL FROM:<sender@example.org>")[0] == 250
        for bad in ["NOTIFY=NEVER,SUCCESS", "NOTIFY=SOMETIMES", "ORCPT=rfc822", "ORCPT=rfc822;a+zz@b"]:
            code, resp = s.docmd(f"RCPT TO:<alice@example.test> {bad}")
            assert code == 501 and resp.startswith(b"5.5.4"), (bad, resp)
        assert s.docmd("RCPT TO:<alice@example.test> NOTIFY=NEVER")[0] == 250


def test_each_recipient_keeps_its_outcome_and_retries_only_what_is_pending(daemon):
    with daemon.smtp() as s:
        s.sendmail("sender@example.org", ["bob@example.test", "far@dest.test"], message(subject="mixed"))
    daemon.wait_mail("bob")
    entries = wait_queue(daemon, lambda e: len(e) == 1 and e[0]["queue_name"] == "deferred")
    [entry] = entries
    assert set(entry) == {"queue_name", "queue_id", "arrival_time", "message_size", "sender", "recipients"}
    assert entry["sender"] == "sender@example.org"
    assert entry["message_size"] > 0 and abs(entry["arrival_time"] - time.time()) < 60
    # Only the recipient still pending is listed, with why it waits.
    assert entry["recipients"] == [
        {"address": "far@dest.test", "delay_reason": "connect to mx2.dest.test[127.0.0.11]:9: Connection refused (os error 111)"}
    ]
    daemon.wait_log_re(r"to=<bob@example.test>, orig_to=<bob@example.test>, relay=local, delay=[0-9.]+, dsn=2\.0\.0, status=sent")
    daemon.wait_log_re(r"to=<far@dest.test>, orig_to=<far@dest.test>, relay=mx2\.dest\.test\[127\.0\.0\.11\]:9, delay=[0-9.]+, dsn=4\.4\.1, status=deferred")
    # Retried (retry is 1 s here, and flushed): bob's copy is not made again.
    daemon.cli("queue", "flush")
    wait_more_attempts(daemon, "far@dest.test", 2)
    assert len(daemon.new_mail("bob")) == 1
    assert daemon.log_text().count("to=<bob@example.test>, orig_to=") == 1


def v1_queue_file(qid, recipients, content):
    """A queue file exactly as version 1 of the format wrote it."""
    env = {
        "version": 1,
        "id": qid,
        "arrival": time.time() - 5,
        "sender": "old@example.org",
        "recipients": recipients,
        "prepend": "Received: from old.client.test\r\n",
        "client": {"ip": "127.0.0.1", "ptr": None, "helo": "old", "auth_user": None, "listener": "mx"},
        "smtputf8": False,
    }
    body = content + json.dumps(env).encode()
    crc = zlib.crc32(body) & 0xFFFFFFFF
    return body + struct.pack("<QQI", len(content), len(body) - len(content), crc) + b"PSTRNQ01"


def test_a_version_1_queue_file_is_delivered_after_an_upgrade(daemon_factory):
    d = daemon_factory(start=False)
    queue = d.dir / "var" / "spool" / "queue"
    queue.mkdir(parents=True)
    qid = "0000000000000A17"
    recipients = [
        {"original": "info@example.test",
         "destination": {"kind": "local", "user": "alice", "tag": "news", "domain": "example.test"}},
        {"original": "bob@example.test",
         "destination": {"kind": "local", "user": "bob", "tag": None, "domain": "example.test"}},
        {"original": "far@dest.test", "destination": {"kind": "remote", "address": "far@dest.test"}},
    ]
    (queue / qid).write_bytes(v1_queue_file(qid, recipients, b"Subject: from v1\r\n\r\nold mail\r\n"))
    d.start()
    # The tag is kept (no .news folder exists, so the copy is in the inbox).
    [copy] = d.wait_mail("alice")
    text = copy.read_text()
    assert "Delivered-To: alice+news@example.test" in text and "old mail" in text
    d.wait_mail("bob")
    # The remote recipient waits, now in a version 2 record.
    entries = wait_queue(d, lambda e: len(e) == 1 and e[0]["queue_name"] == "deferred")
    assert [r["address"] for r in entries[0]["recipients"]] == ["far@dest.test"]
    assert entries[0]["queue_id"] == qid and entries[0]["sender"] == "old@example.org"


def test_queue_hold_show_and_requeue_while_the_daemon_delivers(daemon_factory):
    # Retries every second: the hold must stop them, the requeue restart them.
    d = daemon_factory()
    with d.smtp() as s:
        s.ehlo("client.test")
        assert s.docmd("MAIL FROM:<sender@example.org> ENVID=e1")[0] == 250
        assert s.docmd("RCPT TO:<far@dest.test> NOTIFY=FAILURE ORCPT=rfc822;far@dest.test")[0] == 250
        assert s.data(message(subject="held one"))[0] == 250
    [entry] = wait_queue(d, lambda e: len(e) == 1 and e[0]["queue_name"] == "deferred")
    qid = entry["queue_id"]

    shown = d.cli("queue", "show", qid).stdout
    assert f"*** ENVELOPE RECORDS {qid} ***" in shown
    assert "sender: sender@example.org" in shown and "envid: e1" in shown
    assert "recipient: far@dest.test original=far@dest.test orcpt=rfc822;far@dest.test notify=FAILURE" in shown
    assert "status=deferred dsn=4.4.1 relay=mx2.dest.test[127.0.0.11]:9 (connect to mx2.dest.test[127.0.0.11]:9: Connection refused" in shown
    assert "Subject: held one" in shown and "Received: from" in shown

    out = d.cli("queue", "hold", qid)
    assert out.returncode == 0 and "held" in out.stdout
    [entry] = queue_json(d)
    assert entry["queue_name"] == "hold" and entry["queue_id"] == qid
    attempts = lambda: attempts_of(d, "far@dest.test")
    n = attempts()
    time.sleep(2.5)
    assert attempts() == n, "a held message was attempted"
    assert "hold_reason: held by the administrator" in d.cli("queue", "show", qid).stdout
    # Held twice, or an ID that is not there: an error, and a failure exit.
    assert d.cli("queue", "hold", qid, check=False).returncode == 1
    assert d.cli("queue", "hold", "0000000000000FFF", check=False).returncode == 1

    out = d.cli("queue", "requeue", qid)
    assert out.returncode == 0 and "requeued" in out.stdout
    deadline = time.time() + 10
    while attempts() == n and time.time() < deadline:
        time.sleep(0.1)
    assert attempts() > n
    [entry] = queue_json(d)
    assert entry["queue_name"] == "deferred"
    d.wait_log(f"{qid}: held by the administrator")
    d.wait_log(f"{qid}: requeued (released from hold) by the administrator")


def report_for(daemon, user, timeout=10.0):
    """The delivery status notification in a user's Maildir."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for f in daemon.new_mail(user):
            text = f.read_text(errors="replace")
            if "multipart/report" in text:
                return text
        time.sleep(0.1)
    raise AssertionError(f"no report for {user}\n{daemon.log_text()[-3000:]}")


def test_a_failure_is_reported_to_the_sender_with_its_dsn_parameters(daemon):
    extra = "Delivered-To: alice@example.test\r\n"
    with daemon.smtp() as s:
        s.ehlo("client.test")
        assert b"DSN" in s.ehlo_resp
        assert s.docmd("MAIL FROM:<bob@example.test> RET=HDRS ENVID=QQ314159")[0] == 250
        assert s.docmd("RCPT TO:<alice@example.test> NOTIFY=FAILURE ORCPT=rfc822;info+40x@example.test")[0] == 250
        assert s.data(message(subject="loops back", extra_headers=extra, body="secret body\r\n"))[0] == 250
    text = report_for(daemon, "bob")
    # RFC 3464: from MAILER-DAEMON with the null sender, three parts.
    assert "Return-Path: <>" in text
    assert "MAILER-DAEMON@mx.example.test" in text
    assert "report-type" in text and "delivery-status" in text
    for field in [
        "Original-Envelope-Id: QQ314159",
        "Reporting-MTA: dns; mx.example.test",
        "Original-Recipient: rfc822; info@x@example.test",
        "Final-Recipient: rfc822; alice@example.test",
        "Action: failed",
        "Status: 5.4.6",
        "Diagnostic-Code: smtp; mail forwarding loop for alice@example.test",
        "Arrival-Date: ",
        "Last-Attempt-Date: ",
    ]:
        assert field in text, field
    assert "text/rfc822-headers" in text and "Subject: loops back" in text
    assert "secret body" not in text
    assert daemon.new_mail("alice") == []
    daemon.wait_log_re(r"\w+: removed")


def test_notify_never_and_the_null_sender_get_no_report(daemon):
    extra = "Delivered-To: alice@example.test\r\n"
    with daemon.smtp() as s:
        s.ehlo("client.test")
        assert s.docmd("MAIL FROM:<bob@example.test>")[0] == 250
        assert s.docmd("RCPT TO:<alice@example.test> NOTIFY=NEVER")[0] == 250
        assert s.data(message(subject="never", extra_headers=extra))[0] == 250
        assert s.docmd("MAIL FROM:<>")[0] == 250
        assert s.docmd("RCPT TO:<alice@example.test>")[0] == 250
        assert s.data(message(subject="from null", extra_headers=extra))[0] == 250
    daemon.wait_log("the sender is <>")
    time.sleep(1.5)
    assert daemon.new_mail("bob") == [] and daemon.new_mail("alice") == []
    assert daemon.queue_files() == []
    assert "sender delivery status notification" not in daemon.log_text()


def test_success_is_reported_when_asked_and_ret_full_returns_the_message(daemon):
    with daemon.smtp() as s:
        s.ehlo("client.test")
        assert s.docmd("MAIL FROM:<alice@example.test> RET=FULL")[0] == 250
        assert s.docmd("RCPT TO:<bob@example.test> NOTIFY=SUCCESS,FAILURE")[0] == 250
        assert s.data(message(subject="tell me", body="the whole body\r\n"))[0] == 250
    daemon.wait_mail("bob")
    text = report_for(daemon, "alice")
    assert "Action: delivered" in text and "Status: 2.0.0" in text
    assert "Final-Recipient: rfc822; bob@example.test" in text
    assert "message/rfc822" in text and "the whole body" in text


def test_max_lifetime_returns_what_is_still_pending_to_its_sender(daemon_factory):
    d = daemon_factory(start=False)
    d.config.write_text(d.config_text.replace('retry_max = "1s"', 'retry_max = "1s"\nmax_lifetime = "2s"'))
    d.start()
    with d.smtp() as s:
        s.sendmail("alice@example.test", ["far@dest.test"], message(subject="too slow"))
    text = report_for(d, "alice", timeout=15)
    assert "Final-Recipient: rfc822; far@dest.test" in text and "Action: failed" in text
    assert "delivery time expired" in text
    d.wait_log_re(r"to=<far@dest\.test>, .*status=expired, returned to sender")
    deadline = time.time() + 10
    while d.queue_files() and time.time() < deadline:
        time.sleep(0.1)
    assert d.queue_files() == []


def test_a_local_user_removed_before_delivery_is_bounced_5_1_1(daemon):
    """Accepted for bob, deferred (his Maildir is broken), then bob is
    removed from the config: the retry returns the message to its sender
    as unknown (5.1.1, local(8)'s wording), not retried until max_lifetime."""
    md = daemon.maildir("bob")
    md.mkdir(parents=True)
    (md / "new").write_text("not a directory")
    with daemon.smtp() as s:
        s.sendmail("alice@example.test", ["bob@example.test"], message(subject="for bob"))
    daemon.wait_log_re(r"to=<bob@example.test>, .*status=deferred")
    text = daemon.config_text.replace('users = ["alice", "bob"]', 'users = ["alice"]')
    text = text.replace('team = ["alice", "bob"]', 'team = ["alice"]')
    assert text != daemon.config_text
    daemon.config.write_text(text)
    daemon.cli("reload")
    daemon.cli("queue", "flush")
    daemon.wait_log_re(
        r"to=<bob@example.test>, orig_to=<bob@example.test>, relay=local, delay=[0-9.]+, "
        r"dsn=5\.1\.1, status=bounced \(unknown user: \"bob\"\)"
    )
    report = report_for(daemon, "alice")
    assert "Final-Recipient: rfc822; bob@example.test" in report and "Status: 5.1.1" in report
    wait_queue(daemon, lambda e: e == [])


def test_a_delay_warning_is_sent_once_to_whom_asked(daemon_factory):
    """queue.delay_warning: once the message is that old and still
    pending, its sender is told once (Action: delayed, the last reason),
    and only for recipients whose NOTIFY includes DELAY (the default)."""
    d = daemon_factory(start=False)
    d.config.write_text(d.config_text.replace('retry_max = "1s"', 'retry_max = "1s"\ndelay_warning = "2s"'))
    d.start()
    with d.smtp() as s:
        s.ehlo("client.test")
        assert s.docmd("MAIL FROM:<alice@example.test>")[0] == 250
        assert s.docmd("RCPT TO:<far@dest.test>")[0] == 250
        assert s.docmd("RCPT TO:<quiet@dest.test> NOTIFY=FAILURE")[0] == 250
        assert s.data(message(subject="slow one"))[0] == 250
    text = report_for(d, "alice", timeout=15)
    assert "Subject: Delayed Mail (still being retried)" in text
    assert "Final-Recipient: rfc822; far@dest.test" in text and "Action: delayed" in text
    assert "Status: 4.4.1" in text and "Connection refused" in text
    assert "quiet@dest.test" not in text.split("message/delivery-status")[1].split("rfc822-headers")[0]
    # Retried every second, still pending, but told only once.
    wait_more_attempts(d, "far@dest.test", 3)
    reports = [f for f in d.new_mail("alice") if "multipart/report" in f.read_text()]
    assert len(reports) == 1
    assert len(d.queue_files()) == 1
