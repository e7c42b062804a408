"""Text from clients, end to end: addresses whose case mapping changes
their length, header edits on messages built to be worst cases, mail loops
(`Received:` hop count, `Delivered-To:`)."""

import smtplib
import socket
import threading
import time

import pytest

from conftest import message, plugin_path


def chat(port, lines, source="127.0.0.1", timeout=10.0):
    """Sends each line (str, UTF-8) and reads its reply; returns the replies
    (the last line of each, decoded). A closed connection ends the list."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    f = s.makefile("rb")
    replies = []

    def reply():
        while True:
            line = f.readline()
            if not line:
                return None
            if line[3:4] != b"-":
                return line.decode("utf-8", errors="replace").rstrip("\r\n")

    try:
        replies.append(reply())
        for line in lines:
            s.sendall(line.encode("utf-8") + b"\r\n")
            r = reply()
            replies.append(r)
            if r is None:
                break
    finally:
        f.close()
        s.close()
    return replies


@pytest.mark.parametrize("tag", ["\u212a", "\u212a\u212ax", "\u0130\u0130\u0130", "a\u212a+b"])
def test_a_tag_whose_case_mapping_changes_its_length_is_delivered(daemon, tag):
    # U+212A KELVIN SIGN lower-cases from 3 bytes to 1, U+0130 from 2 to 3:
    # the tag was cut at an offset measured on the lower-cased copy, and
    # this exact sequence panicked the session.
    r = chat(daemon.port, [
        "EHLO client.test",
        "MAIL FROM:<> SMTPUTF8",
        f"RCPT TO:<alice+{tag}@example.test>",
        "RCPT TO:<bob@example.test>",
        "DATA",
    ])
    assert r[2].startswith("250"), r
    assert r[3].startswith("250 2.1.5"), r
    assert r[4].startswith("250 2.1.5"), r
    assert r[5].startswith("354"), r
    # The session goes on: the same connection would, and so does the next.
    r = chat(daemon.port, [
        "EHLO client.test",
        "MAIL FROM:<> SMTPUTF8",
        f"RCPT TO:<alice+{tag}@example.test>",
        "DATA",
        "Subject: kelvin\r\n\r\nbody\r\n.",
        "RSET",
        "QUIT",
    ])
    assert [x[:3] for x in r[2:]] == ["250", "250", "354", "250", "250", "221"], r
    files = daemon.wait_mail("alice")
    text = files[0].read_bytes().decode("utf-8")
    assert f"Delivered-To: alice+{tag}@example.test\r\n" in text
    daemon.wait_log(f"to=<alice+{tag}@example.test>")
    assert "panicked" not in daemon.log_text()


def big_message(field_line, copies, body_mb):
    """A header section of `copies` times `field_line`, then `body_mb` MB of
    body: the worst case for an edit made one field at a time."""
    head = ("From: a@example.org\r\nSubject: big\r\n" + field_line * copies).encode()
    line = b"x" * 998 + b"\r\n"
    return head + b"\r\n" + line * (body_mb * 1024 * 1024 // len(line))


def send_raw(port, msg, results, key, source="127.0.0.1"):
    """One transaction with `msg` as content; records the final reply and
    when the whole content had been sent."""
    try:
        with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=120) as s:
            s.ehlo("client.test")
            s.mail("a@example.org")
            s.rcpt("alice@example.test")
            code, _ = s.docmd("DATA")
            assert code == 354
            s.send(msg.replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n")
            results[key + "_sent"] = time.monotonic()
            results[key] = s.getreply()
    except Exception as e:  # reported by the assertions below
        results[key] = e


STRIP = """
[[plugin]]
name = "edit"
path = "{path}"
time_limit = "10s"
memory_limit = "64M"

[[chain.data]]
plugin = "edit"
config = {{ mode = "{mode}" }}
"""


def small_transactions(port, stop, took):
    """Whole transactions from another address, one after the other, until
    `stop`; records how long each took (or the error that ended them)."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            with smtplib.SMTP("127.0.0.1", port, source_address=("127.0.0.2", 0), timeout=30) as s:
                s.ehlo("small.test")
                assert s.mail("b@example.org")[0] == 250
                assert s.rcpt("bob@example.test")[0] == 250
                assert s.data(message(subject="small"))[0] == 250
        except Exception as e:  # reported by the caller's assertions
            took.append((time.monotonic() - started, e))
            return
        took.append((time.monotonic() - started, None))


@pytest.mark.parametrize("path", ["return-path", "plugin-strip", "plugin-rewrite"])
def test_worst_case_header_edits_never_hold_up_another_client(daemon_factory, path):
    # Several connections send messages at the size limit made of one
    # repeated field that must be removed (Return-Path: only the host
    # writes it) or that a plugin removes or changes; all the while another
    # client, from another address, runs whole transactions. With a drain
    # or splice per field on the async workers (16 s for one of these
    # messages) it waited that long for its banner; the bound below is far
    # above what a transaction takes.
    # The header section is at most 1 MiB (smtp.max_header_size's
    # ceiling): as many short fields as fit, at the most the config allows.
    # One drain per field moved the rest of a 5-7 MB message each time.
    limits = 'max_header_size = "1M"\nmax_header_fields = 1000000'
    if path == "return-path":
        d = daemon_factory(smtp=limits)
        copies = 34_000
        msg = big_message("Return-Path: <r@example.org>\r\n", copies, 5)
    else:
        mode = path.split("-", 1)[1]
        d = daemon_factory(smtp=limits, extra=STRIP.format(path=plugin_path("misbehave"), mode=mode))
        copies = 80_000
        msg = big_message("X-Repeat: v\r\n", copies, 7)
    assert len(msg) < 10_240_000
    assert msg.index(b"\r\n\r\n") < 1 << 20
    results, took, stop = {}, [], threading.Event()
    small = threading.Thread(target=small_transactions, args=(d.port, stop, took))
    small.start()
    # More of them than the daemon has async workers (one per core).
    big = [
        threading.Thread(target=send_raw, args=(d.port, msg, results, f"big{i}"))
        for i in range(4)
    ]
    for t in big:
        t.start()
    for t in big:
        t.join(300)
    stop.set()
    small.join(60)
    for i in range(4):
        assert results[f"big{i}"][0] == 250, results[f"big{i}"]
    assert took, "no small transaction ran"
    errors = [e for _, e in took if e is not None]
    assert not errors, errors
    slowest = max(t for t, _ in took)
    print(f"{len(took)} small transactions, the slowest took {slowest:.2f}s")
    assert slowest < 10, f"a small transaction took {slowest:.1f}s"
    d.wait_mail("bob", count=len(took))
    files = d.wait_mail("alice", count=4, timeout=30)
    head = files[0].read_bytes().split(b"\r\n\r\n", 1)[0] + b"\r\n"
    if path == "return-path":
        # Only the Return-Path: delivery writes.
        assert head.count(b"Return-Path:") == 1, head[:300]
        d.wait_log(f"removed {copies} Return-Path/X-Postern-Score field(s) sent by the client")
    elif path == "plugin-strip":
        assert b"X-Repeat:" not in head
    else:
        assert head.count(b"X-Repeat: rewritten ") == 64
        assert head.count(b"X-Repeat: v\r\n") == copies - 64


def hops(n):
    return "".join(
        f"Received: from hop{i}.example.org by hop{i + 1}.example.org; Sat, 28 Nov 2026 12:00:00 +0000\r\n"
        for i in range(n)
    )


@pytest.mark.parametrize("limit", [None, 5])
def test_too_many_received_fields_is_a_mail_loop(daemon_factory, limit):
    # Postfix hopcount_limit (default 50): more Received: fields than that
    # is refused at the end of DATA, with a log line.
    d = daemon_factory(smtp="" if limit is None else f"hopcount_limit = {limit}")
    n = limit or 50
    with d.smtp() as s:
        s.ehlo("client.test")
        s.mail("a@example.org")
        s.rcpt("alice@example.test")
        code, resp = s.data(message(subject="loop", extra_headers=hops(n + 1)))
        assert (code, resp[:5]) == (554, b"5.4.6"), (code, resp)
        # The session goes on, and a message within the limit passes;
        # Received: fields in the body are no hops.
        s.mail("a@example.org")
        s.rcpt("alice@example.test")
        assert s.data(message(subject="ok", extra_headers=hops(n), body=hops(9)))[0] == 250
    d.wait_log_re(rf"reject: END-OF-MESSAGE from .*554 5\.4\.6 .*hopcount exceeded: {n + 1} Received: fields, hopcount_limit {n}")
    files = d.wait_mail("alice")
    assert len(files) == 1 and b"Subject: ok" in files[0].read_bytes()


def test_delivered_to_naming_the_recipient_is_a_mail_loop(daemon):
    # Postfix local(8): a message that already went through this mailbox
    # (a Delivered-To: field names it) is not delivered to it again:
    # returned to its sender (5.4.6), with a log line; other recipients
    # get it.
    with daemon.smtp() as s:
        s.ehlo("client.test")
        s.mail("a@example.org")
        s.rcpt("alice@example.test")
        s.rcpt("bob@example.test")
        s.rcpt("alice+news@example.test")
        extra = "Delivered-To: ALICE@Example.Test\r\nDelivered-To:\r\n alice+News@example.test\r\n"
        assert s.data(message(subject="looped", extra_headers=extra, body="Delivered-To: bob@example.test\r\n"))[0] == 250
    daemon.wait_log_re(r"to=<alice@example\.test>, .*dsn=5\.4\.6, status=bounced \(mail forwarding loop for alice@example\.test\)")
    daemon.wait_log_re(r"to=<alice\+news@example\.test>, .*dsn=5\.4\.6, status=bounced \(mail forwarding loop for alice\+news@example\.test\)")
    files = daemon.wait_mail("bob")
    assert b"Subject: looped" in files[0].read_bytes()
    # The sender is told (its report waits in the queue: remote delivery
    # is another issue's), and the looping copy is never delivered.
    daemon.wait_log_re(r"sender delivery status notification: \w+ \(2 recipient")
    time.sleep(2.5)
    assert daemon.new_mail("alice") == []
    assert daemon.new_mail("bob") == files
