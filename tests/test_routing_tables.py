"""Routing tables end to end (issue 13 item 1): Postfix virtual(5) and
aliases(5) files read as they are, against the real daemon."""

import subprocess
import time

from conftest import BIN, ROOT, message

SEED = (ROOT / "examples" / "seed" / "virtual").read_text()

ALIASES = """\
# aliases(5)
staff: alice, bob
"""


def routed(daemon_factory, virtual=SEED, aliases=ALIASES, start=True):
    """A daemon with virtual.test and other.test as virtual alias domains, the seed's
    virtual table and an aliases(5) file, in its directory."""
    d = daemon_factory(start=False)
    (d.dir / "virtual").write_text(virtual)
    (d.dir / "aliases").write_text(aliases)
    tables = ('virtual_alias_domains = ["virtual.test", "other.test"]\n'
              'virtual_alias_maps = ["virtual"]\n'
              'alias_maps = ["aliases"]\n')
    marker = 'maildir = "var/mail/{user}/Maildir"\n'
    assert marker in d.config_text
    d.config_text = d.config_text.replace(marker, marker + tables)
    d.config.write_text(d.config_text)
    if start:
        d.start()
    return d


def rcpt(daemon, address, source="127.0.0.1"):
    with daemon.smtp(source=source) as s:
        s.ehlo("client.test")
        s.mail("sender@example.org")
        return s.rcpt(address)


def subjects(daemon, user, count, folder=""):
    files = daemon.wait_mail(user, count=count, folder=folder)
    out = []
    for f in files:
        head = f.read_bytes().decode(errors="replace").partition("\r\n\r\n")[0]
        out.append(head)
    return out


def test_virtual_aliases_are_delivered_into_the_right_maildirs(daemon_factory):
    d = routed(daemon_factory)
    for sub in ("cur", "new", "tmp"):
        (d.maildir("alice", ".news") / sub).mkdir(parents=True, exist_ok=True)
    # Not a relay: a client outside trusted_networks may send to a virtual domain.
    with d.smtp(source="127.0.0.2") as s:
        s.sendmail("sender@example.org", ["info@virtual.test"], message(subject="one"))
        s.sendmail("sender@example.org", ["team@virtual.test"], message(subject="several"))
        s.sendmail("sender@example.org", ["whoever@other.test"], message(subject="catch-all"))
        s.sendmail("sender@example.org", ["info+news@virtual.test"], message(subject="tagged"))
    alice = subjects(d, "alice", 2)
    assert any("Subject: one" in h and "Delivered-To: alice@example.test" in h for h in alice)
    assert any("Subject: several" in h for h in alice)
    bob = subjects(d, "bob", 2)
    assert any("Subject: several" in h for h in bob)
    assert any("Subject: catch-all" in h and "Delivered-To: bob@example.test" in h for h in bob)
    # The +tag is carried through the alias to the folder.
    [tagged] = subjects(d, "alice", 1, folder=".news")
    assert "Subject: tagged" in tagged
    assert "Delivered-To: alice+news@example.test" in tagged
    time.sleep(0.3)
    assert len(d.new_mail("alice")) == 2 and len(d.new_mail("bob")) == 2


def test_unknown_address_in_a_virtual_alias_domain_is_550_5_1_1_at_rcpt(daemon_factory):
    d = routed(daemon_factory)
    code, resp = rcpt(d, "nobody@virtual.test", source="127.0.0.2")
    assert code == 550 and resp.startswith(b"5.1.1 "), resp
    # postmaster@ of a virtual domain reaches the local postmaster.
    with d.smtp() as s:
        s.sendmail("sender@example.org", ["postmaster@virtual.test"], message(subject="pm"))
    assert any("Subject: pm" in h for h in subjects(d, "alice", 1))


def test_a_line_appended_takes_effect_without_restart(daemon_factory):
    d = routed(daemon_factory)
    assert rcpt(d, "new@virtual.test")[0] == 550
    # By the file watch.
    with open(d.dir / "virtual", "a") as f:
        f.write("new@virtual.test bob@example.test\n")
    deadline = time.time() + 10
    while rcpt(d, "new@virtual.test")[0] != 250:
        assert time.time() < deadline, d.log_text()[-2000:]
        time.sleep(0.2)
    d.wait_log("routing tables: read again after a change")
    # By `postern reload`: in effect as soon as it returns.
    with open(d.dir / "virtual", "a") as f:
        f.write("newer@virtual.test alice@example.test\n")
    d.cli("reload")
    assert rcpt(d, "newer@virtual.test")[0] == 250
    with d.smtp() as s:
        s.sendmail("sender@example.org", ["newer@virtual.test"], message(subject="after reload"))
    assert any("Subject: after reload" in h for h in subjects(d, "alice", 1))


def test_a_broken_edit_keeps_the_old_tables_and_is_logged_with_its_line(daemon_factory):
    d = routed(daemon_factory)
    with open(d.dir / "virtual", "a") as f:
        f.write("fine@virtual.test bob@example.test\nbroken@virtual.test\n")
    line = len((d.dir / "virtual").read_text().splitlines())
    m = d.wait_log_re(r"routing tables: (\S+):(\d+): \"broken@virtual.test\" has no result")
    assert m.group(1).endswith("virtual") and int(m.group(2)) == line
    # Once per version of the file, not every two seconds.
    time.sleep(2.5)
    assert d.log_text().count("has no result") == 1
    assert rcpt(d, "info@virtual.test")[0] == 250
    assert rcpt(d, "fine@virtual.test")[0] == 550
    # A reload with the broken file keeps the running generation.
    p = d.cli("reload", check=False)
    assert p.returncode != 0 and f"virtual:{line}:" in p.stderr + p.stdout
    assert rcpt(d, "info@virtual.test")[0] == 250


BROKEN_LINE = len(SEED.splitlines()) + 3


def test_check_and_start_refuse_a_broken_table_with_file_and_line(daemon_factory):
    d = routed(daemon_factory, aliases=ALIASES + "prog: \"|/usr/bin/vacation alice\"\n", start=False)
    p = d.cli("check", check=False)
    assert p.returncode == 1
    assert "aliases:3: " in p.stderr and "(`|command`) is not supported (yet)" in p.stderr, p.stderr
    (d.dir / "aliases").write_text(ALIASES)
    # A blank line, a whitespace-only one, then a pattern without a result.
    (d.dir / "virtual").write_text(SEED + "\n  \n@\n")
    p = d.cli("check", check=False)
    assert p.returncode == 1 and f"virtual:{BROKEN_LINE}: " in p.stderr, p.stderr
    d.start(wait=False)
    assert d.proc.wait(timeout=20) != 0
    assert f"virtual:{BROKEN_LINE}: " in d.log_text()
    (d.dir / "virtual").write_text(SEED)
    p = d.cli("check")
    assert "table key(s)" in p.stdout


def test_postern_route_prints_results_transports_and_status(daemon_factory):
    d = routed(daemon_factory, start=False)
    p = d.cli("route", "info@virtual.test", "team+x@virtual.test", "ext@virtual.test",
              "anyone@other.test", "staff@example.test")
    lines = p.stdout.splitlines()
    assert "info@virtual.test -> alice@example.test (local, maildir var/mail/alice/Maildir)" in lines
    assert "team+x@virtual.test -> alice+x@example.test (local, maildir var/mail/alice/Maildir)" in lines
    assert "team+x@virtual.test -> bob+x@example.test (local, maildir var/mail/bob/Maildir)" in lines
    assert "ext@virtual.test -> friend@dest.test (smtp, MX of dest.test)" in lines
    assert "anyone@other.test -> bob@example.test (local, maildir var/mail/bob/Maildir)" in lines
    assert "staff@example.test -> alice@example.test (local, maildir var/mail/alice/Maildir)" in lines
    assert len(lines) == 7, p.stdout
    p = d.cli("route", "info@virtual.test", "nobody@virtual.test", check=False)
    assert p.returncode == 1
    assert "nobody@virtual.test: 550 5.1.1 user unknown" in p.stdout.splitlines()
    assert "info@virtual.test -> alice@example.test" in p.stdout
    p = subprocess.run([str(BIN), "route", "--config", str(d.config), "x@remote.test"],
                       cwd=d.dir, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout == "x@remote.test -> x@remote.test (smtp, MX of remote.test)\n"
