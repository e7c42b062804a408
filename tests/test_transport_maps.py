"""Transport tables in files (issue 13, items 1-2): Postfix transport(5)
files named by `local.transport_maps`, read as they are, reloaded, checked
with FILE:LINE; the mailbox kind (maildir, mbox, pipe) chosen per entry;
error/retry/discard as Postfix's error(8), retry(8) and discard(8)."""

import json
import time
import uuid

from conftest import BASE_CONFIG, message
from test_lmtp import dovecot, wait_dovecot  # noqa: F401 (fixture)
from test_mbox_pipe import delivered, mbox_messages, pipe_dir, root_only, send, wait_for  # noqa: F401
from test_queue_records import report_for

TABLE = """\
# transport(5): pattern  transport:nexthop
bob@example.test   mbox
gone.test          error:5.1.2 gone.test has moved
  to new.test
quiet.test         discard:dropped by policy
.later.test        retry:4.4.5 not today
relay.test         smtp:[127.0.0.1]:9
lmtp.test          lmtp:[127.0.0.1]:24
"""


def local_config(lines, extra=""):
    anchor = 'maildir = "var/mail/{{user}}/Maildir"'
    assert anchor in BASE_CONFIG
    return BASE_CONFIG.replace(anchor, anchor + "\n" + lines.replace("{", "{{").replace("}", "}}")) + extra


def with_table(daemon_factory, table=TABLE, lines="", extra="", start=True):
    """A daemon whose `local.transport_maps` is the file `transport` of its
    directory; mbox files under var/mbox (var/mail holds the Maildirs)."""
    cfg = local_config('mbox = "var/mbox/{user}"\ntransport_maps = ["transport"]\n' + lines, extra)
    d = daemon_factory(start=False, config=cfg)
    (d.dir / "transport").write_text(table)
    if start:
        d.start()
    return d


def route(d, *addresses):
    return d.cli("route", *addresses, check=False).stdout.splitlines()


def rcpt_code(d, address, source):
    with d.smtp(source=source) as s:
        s.ehlo("client.test")
        s.mail("sender@example.org")
        return s.rcpt(address)[0]


def test_entries_of_the_file_route_per_address_and_domain(daemon_factory):
    d = with_table(daemon_factory)
    lines = route(d, "bob+x@example.test", "alice@example.test", "a@gone.test", "a@quiet.test",
                  "a@b.later.test", "a@relay.test")
    assert "bob+x@example.test -> bob+x@example.test (local, mbox var/mbox/bob) via transport:2" in lines, lines
    assert "alice@example.test -> alice@example.test (local, maildir var/mail/alice/Maildir)" in lines, lines
    assert "a@gone.test -> a@gone.test (error, 5.1.2 gone.test has moved to new.test) via transport:3" in lines, lines
    assert "a@quiet.test -> a@quiet.test (discard, dropped by policy) via transport:5" in lines, lines
    assert "a@b.later.test -> a@b.later.test (retry, 4.4.5 not today) via transport:6" in lines, lines
    assert "a@relay.test -> a@relay.test (smtp, [127.0.0.1]:9) via transport:7" in lines, lines

    send(d, ["bob@example.test", "alice@example.test"], subject="split", sender="alice@example.test")
    mbox = d.dir / "var" / "mbox" / "bob"
    [m] = wait_for(lambda: mbox.exists() and mbox_messages(mbox), "bob's mbox", d)
    assert "Subject: split" in m
    [a] = d.wait_mail("alice")
    assert b"Subject: split" in a.read_bytes()
    assert not d.maildir("bob").exists()

    send(d, ["x@gone.test", "y@quiet.test", "z@b.later.test"], subject="refused", sender="alice@example.test")
    d.wait_log_re(r"to=<x@gone\.test>, orig_to=<x@gone\.test>, relay=none, delay=[0-9.]+, dsn=5\.1\.2, "
                  r"status=bounced \(gone\.test has moved to new\.test\)")
    d.wait_log_re(r"to=<y@quiet\.test>, .*relay=none, .*dsn=2\.0\.0, status=sent \(dropped by policy\)")
    d.wait_log_re(r"to=<z@b\.later\.test>, .*relay=none, .*dsn=4\.4\.5, status=deferred \(not today\)")
    report = report_for(d, "alice")
    assert "Final-Recipient: rfc822; x@gone.test" in report and "Status: 5.1.2" in report
    assert "gone.test has moved to new.test" in report
    assert "y@quiet.test" not in report.split("message/delivery-status")[1].split("text/rfc822-headers")[0]


def test_only_delivering_entries_open_a_domain_and_star_is_last(daemon_factory):
    table = TABLE + "*  error:5.7.1 no other mail from here\n"
    d = with_table(daemon_factory, table=table)
    # From outside: a domain whose entry delivers is accepted (relay_domains);
    # error, discard, retry and `*` open nothing.
    assert rcpt_code(d, "a@relay.test", "127.0.0.2") == 250
    assert rcpt_code(d, "a@lmtp.test", "127.0.0.2") == 250
    for closed in ("a@gone.test", "a@quiet.test", "a@x.later.test", "a@elsewhere.test"):
        assert rcpt_code(d, closed, "127.0.0.2") == 554, closed
    # From a trusted client, any other domain takes `*`; a domain's own
    # entry comes first.
    assert route(d, "a@elsewhere.test") == [
        "a@elsewhere.test -> a@elsewhere.test (error, 5.7.1 no other mail from here) via transport:9"]
    assert route(d, "a@relay.test")[0].endswith("via transport:7")


def test_toml_answers_first_for_the_same_key_and_the_most_specific_key_wins(daemon_factory):
    table = TABLE + "bob+news@example.test discard\n"
    extra = '\n[transport]\n"bob@example.test" = "maildir"\n"example.test" = "mbox"\n'
    d = with_table(daemon_factory, table=table, extra=extra, start=False)
    assert route(d, "bob@example.test") == [
        'bob@example.test -> bob@example.test (local, maildir var/mail/bob/Maildir) via [transport] "bob@example.test"']
    # The file's user+tag key is more specific than the TOML's user key.
    assert route(d, "bob+news@example.test") == [
        "bob+news@example.test -> bob+news@example.test (discard, discarded) via transport:9"]
    assert route(d, "alice@example.test") == [
        'alice@example.test -> alice@example.test (local, mbox var/mbox/alice) via [transport] "example.test"']


def test_file_edits_take_effect_on_reload_and_broken_ones_are_refused_with_file_and_line(daemon_factory):
    d = with_table(daemon_factory)
    send(d, ["alice@example.test"], subject="before")
    d.wait_mail("alice")
    (d.dir / "transport").write_text(TABLE + "alice@example.test discard:on holiday\n")
    d.cli("reload")
    send(d, ["alice@example.test"], subject="after")
    d.wait_log_re(r"to=<alice@example\.test>, .*relay=none, .*status=sent \(on holiday\)")
    assert len(d.new_mail("alice")) == 1

    for bad, want in [
        ("a.test frob:x\n", "transport:1: unknown transport \"frob\""),
        ("\nfar.test mbox\n", "transport:2: local delivery is only for domains in local.domains"),
        ("* local\n", "transport:1: local delivery is only for domains in local.domains"),
        ("alice@example.test pipe\n", "transport:1: cannot deliver by pipe: local.pipe.command: is empty"),
        ("a.test smtp\na.test lmtp:h:24\n", "transport:2: \"a.test\" is already defined at line 1"),
        ("a.test error:4.1.1 x\n", "transport:1: error: the status code 4.1.1 must be 5.X.X"),
    ]:
        (d.dir / "transport").write_text(bad)
        p = d.cli("check", check=False)
        assert p.returncode != 0, bad
        assert want in p.stdout + p.stderr, (bad, p.stdout + p.stderr)
    # The running daemon keeps the tables read before, and says why.
    d.wait_log("the tables read before stay in use", timeout=10)
    send(d, ["alice@example.test"], subject="still on holiday")
    d.wait_log_re(r"(?s)status=sent \(on holiday\).*status=sent \(on holiday\)")


def test_lmtp_entry_of_a_file_delivers_into_dovecot(daemon_factory, dovecot):  # noqa: F811
    d = with_table(daemon_factory)
    user = f"u{uuid.uuid4().hex[:10]}"
    assert route(d, f"{user}@lmtp.test") == [
        f"{user}@lmtp.test -> {user}@lmtp.test (lmtp, 127.0.0.1:24) via transport:8"]
    send(d, [f"{user}@lmtp.test"], subject="by lmtp from a file")
    [f] = wait_dovecot("lmtp.test", user)
    assert b"Subject: by lmtp from a file" in f.read_bytes()


@root_only
def test_pipe_and_mbox_chosen_per_toml_entry(daemon_factory, pipe_dir):  # noqa: F811
    cmd = json.dumps([str(pipe_dir / "deliver.py"), "{user}", "{sender}", "{recipient}", "{tag}", "{domain}"])
    extra = '\n[transport]\n"alice@example.test" = "pipe"\n"bob+box@example.test" = "mbox"\n'
    cfg = local_config(f'mbox = "var/mbox/{{user}}"\n[local.pipe]\ncommand = {cmd}\nuser = "nobody"\n', extra)
    d = daemon_factory(config=cfg)
    out = d.cli("route", "alice@example.test", "bob@example.test", "bob+box@example.test").stdout
    assert f"(local, pipe {pipe_dir / 'deliver.py'}) via [transport] \"alice@example.test\"" in out, out
    assert "bob@example.test -> bob@example.test (local, maildir var/mail/bob/Maildir)\n" in out, out
    assert "(local, mbox var/mbox/bob) via [transport] \"bob+box@example.test\"" in out, out
    send(d, ["alice@example.test", "bob@example.test", "bob+box@example.test"], subject="three ways")
    [rec] = wait_for(lambda: delivered(pipe_dir, "alice"), "alice's command", d)
    assert "Subject: three ways" in rec["data"]
    [b] = d.wait_mail("bob")
    assert b"Subject: three ways" in b.read_bytes()
    mbox = d.dir / "var" / "mbox" / "bob"
    [m] = wait_for(lambda: mbox.exists() and mbox_messages(mbox), "bob's mbox", d)
    assert "Delivered-To: bob+box@example.test" in m
    time.sleep(0.3)
    assert not d.maildir("alice").exists()


def test_a_folder_made_for_a_tag_is_marked_and_subscribed_as_dovecot_lda_does(daemon_factory):
    d = daemon_factory(start=False, config=local_config("create_tag_folders = true\n"))
    # alice already has a Dovecot version 2 subscriptions file; bob none.
    d.maildir("alice").mkdir(parents=True)
    (d.maildir("alice") / "subscriptions").write_bytes(b"V\t2\n\nTrash\n")
    d.start()
    with d.smtp() as s:
        s.sendmail("sender@example.org", ["alice+lists@example.test"], message(subject="one"))
        s.sendmail("sender@example.org", ["alice+lists@example.test"], message(subject="two"))
        s.sendmail("sender@example.org", ["bob+news@example.test", "bob+work@example.test"], message())
    d.wait_mail("alice", count=2, folder=".lists")
    d.wait_mail("bob", folder=".news")
    d.wait_mail("bob", folder=".work")
    for user, folder in (("alice", ".lists"), ("bob", ".news"), ("bob", ".work")):
        marker = d.maildir(user, folder) / "maildirfolder"
        assert marker.is_file() and marker.stat().st_size == 0, (user, folder)
    assert (d.maildir("alice") / "subscriptions").read_bytes() == b"V\t2\n\nTrash\nlists\n"
    assert sorted((d.maildir("bob") / "subscriptions").read_text().splitlines()) == ["news", "work"]
    assert not (d.maildir("bob") / "subscriptions.lock").exists()
    # A folder that exists (made by the user) is left as it is.
    for sub in ("cur", "new", "tmp"):
        (d.maildir("bob", ".own") / sub).mkdir(parents=True)
    with d.smtp() as s:
        s.sendmail("sender@example.org", ["bob+own@example.test"], message())
    d.wait_mail("bob", folder=".own")
    assert "own" not in (d.maildir("bob") / "subscriptions").read_text().splitlines()
