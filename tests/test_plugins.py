"""Policy plugins end to end: the real daemon, real WASM components, real
clients. Misbehaving plugins, hot swap under load, the Python example."""

import os
import re
import signal
import smtplib
import subprocess
import threading
import time

import pytest

from conftest import BASE_CONFIG, BIN, CACHE, CACHE_KEY, ROOT, message, plugin_path, raw_session, swaks

CACHE_ARGS = ["--cache-dir", str(CACHE), "--cache-key", str(CACHE_KEY)]
PYTHON_PLUGIN = ROOT / "examples" / "plugins" / "python-subject-score" / "subject_score.wasm"


def access_plugin(sender_rules, stage="rcpt", extra_cfg=""):
    return f"""
[[plugin]]
name = "access"
path = "{plugin_path('access')}"

[[chain.{stage}]]
plugin = "access"
config.sender = {sender_rules}
{extra_cfg}
"""


def misbehave(name, mode, when, on_error="tempfail", stage="rcpt", time_limit="200ms", memory="16M"):
    return f"""
[[plugin]]
name = "{name}"
path = "{plugin_path('misbehave')}"
on_error = "{on_error}"
time_limit = "{time_limit}"
memory_limit = "{memory}"

[[chain.{stage}]]
plugin = "{name}"
config = {{ mode = "{mode}", when_rcpt = "{when}" }}
"""


def send(d, sender, rcpt, subject="t", source="127.0.0.1"):
    """One transaction; returns (rcpt code, data code or None)."""
    with d.smtp(source=source) as s:
        s.ehlo("client.test")
        assert s.mail(sender)[0] == 250
        code, _ = s.rcpt(rcpt)
        if code != 250:
            return code, None
        return code, s.data(message(subject=subject))[0]


def test_quickstart_chain_rejects_blocked_sender_at_rcpt(daemon_factory):
    d = daemon_factory(extra=access_plugin('{ "blocked.test" = "REJECT" }'))
    rc, out = swaks("--server", f"127.0.0.1:{d.port}", "--helo", "client.test",
                    "--from", "spam@blocked.test", "--to", "alice@example.test")
    assert rc != 0
    assert "<** 554 5.7.1 <spam@blocked.test>: Sender address rejected: Access denied" in out
    rc, out = swaks("--server", f"127.0.0.1:{d.port}", "--helo", "client.test",
                    "--from", "ok@fine.test", "--to", "alice@example.test")
    assert rc == 0, out
    d.wait_mail("alice")
    d.wait_log("plugin=access")


def test_quickstart_config_runs_with_its_plugin(tmp_path):
    p = subprocess.run([str(BIN), "check", "--config", str(ROOT / "examples" / "quickstart.toml")],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "access [connect,helo,mail,rcpt,data]" in p.stdout


@pytest.mark.parametrize("mode,why", [
    ("loop", "time limit exceeded"),
    ("sleep", "time limit exceeded"),
    ("hog", "memory limit exceeded"),
    ("trap", "trapped"),
    ("flood", r"outcome refused: returned 100000 header actions \(at most 64\)"),
])
def test_misbehaving_plugin_costs_one_4xx_and_the_daemon_carries_on(daemon_factory, mode, why):
    # The hog gets time enough that its memory limit, not a slow VM's
    # clock, is what stops it.
    limit = "2s" if mode == "hog" else "200ms"
    d = daemon_factory(extra=misbehave("bad", mode, f"{mode}@", time_limit=limit))
    # A parallel session started while the plugin misbehaves is unaffected.
    results = {}

    def other():
        results["other"] = send(d, "a@example.org", "bob@example.test", subject="parallel")

    with d.smtp() as s:
        s.ehlo("client.test")
        s.mail("a@example.org")
        t = threading.Thread(target=other)
        t.start()
        code, resp = s.rcpt(f"{mode}@example.test")
        t.join(10)
        assert code == 451 and resp.startswith(b"4.3.0"), (code, resp)
        # Exactly one 4xx: the same session goes on normally.
        assert s.rcpt("alice@example.test")[0] == 250
        assert s.data(message(subject="after the failure"))[0] == 250
    assert results["other"] == (250, 250)
    d.wait_mail("alice")
    d.wait_mail("bob")
    d.wait_log_re(rf"plugin bad failed at rcpt: {why}.*on_error=tempfail")
    assert d.proc.poll() is None


def test_on_error_continue_fails_open(daemon_factory):
    d = daemon_factory(extra=misbehave("flaky", "trap", "trap@", on_error="continue"))
    assert send(d, "a@example.org", "trap@example.test") == (250, 250)
    d.wait_mail("alice")
    d.wait_log("plugin flaky failed at rcpt: trapped")
    d.wait_log("on_error=continue")


@pytest.mark.parametrize("reuse", ["false", "true"])
def test_entry_after_a_trap_of_its_component_gets_a_new_instance(daemon_factory, reuse):
    # Two entries of one component in one stage share an instance; when the
    # first traps, the second must run on a new one, not the poisoned one.
    extra = f"""
[[plugin]]
name = "mb"
path = "{plugin_path('misbehave')}"
on_error = "continue"
reuse_instances = {reuse}

[[chain.rcpt]]
plugin = "mb"
name = "mb-trap"
config = {{ mode = "trap", when_rcpt = "trap@" }}

[[chain.rcpt]]
plugin = "mb"
name = "mb-reject"
config = {{ mode = "reject", when_rcpt = "trap@" }}
"""
    d = daemon_factory(extra=extra)
    for _ in range(2):
        assert send(d, "a@example.org", "trap@example.test")[0] == 550
    d.wait_log("plugin mb-trap failed at rcpt: trapped")
    assert send(d, "a@example.org", "alice@example.test") == (250, 250)
    d.wait_mail("alice")


def test_misbehaving_data_plugin(daemon_factory):
    d = daemon_factory(extra=misbehave("slow", "loop", "loop@", stage="data", time_limit="100ms"))
    with d.smtp() as s:
        s.ehlo("client.test")
        s.mail("a@example.org")
        s.rcpt("loop@example.test")
        code, resp = s.data(message())
        assert code == 451 and resp.startswith(b"4.3.0")
        assert s.noop()[0] == 250
    assert d.queue_files() == [] and d.new_mail("alice") == []


def test_data_hook_sees_every_recipient_of_its_own_transaction(daemon_factory):
    # A plugin at RCPT makes the host keep the envelope up to date recipient
    # by recipient; at end of data the envelope must list all of them, and
    # the next transaction of the session only its own.
    extra = f"""
[[plugin]]
name = "probe"
path = "{plugin_path('misbehave')}"

[[chain.rcpt]]
plugin = "probe"
config = {{ mode = "ok" }}

[[chain.data]]
plugin = "probe"
config = {{ mode = "reject", when_rcpt = "trap@" }}
"""
    d = daemon_factory(extra=extra)
    with d.smtp() as s:
        s.ehlo("client.test")
        assert s.mail("a@example.org")[0] == 250
        for r in ("alice@example.test", "bob@example.test", "trap@example.test"):
            assert s.rcpt(r)[0] == 250
        code, resp = s.data(message())
        assert code == 550 and b"misbehave says no" in resp
        assert s.mail("a@example.org")[0] == 250
        assert s.rcpt("alice@example.test")[0] == 250
        assert s.data(message())[0] == 250
    d.wait_mail("alice")


@pytest.mark.parametrize("plugin,needle", [
    ("wrong_version", "built against postern:filter@0.9.0, this host speaks @0.2.x"),
    ("wrong_signature", "an exported hook has the wrong type"),
])
def test_wrong_wit_is_refused_at_load(daemon_factory, plugin, needle):
    bad = f"""
[[plugin]]
name = "old"
path = "{plugin_path(plugin)}"
[[chain.rcpt]]
plugin = "old"
"""
    d = daemon_factory(start=False, extra=bad)
    p = d.cli("check", check=False)
    assert p.returncode == 1 and needle in p.stderr, p.stderr
    d.start(wait=False)
    assert d.proc.wait(timeout=20) != 0
    d.wait_log(needle)


def test_entry_config_is_validated_by_the_plugin(daemon_factory):
    d = daemon_factory(start=False, extra=misbehave("picky", "refuse-config", "x@"))
    p = d.cli("check", check=False)
    assert p.returncode == 1
    assert "chain.rcpt[0] (picky): config refused by the plugin: mode refuse-config is refused" in p.stderr
    d2 = daemon_factory(name="access", start=False,
                        extra=access_plugin('{ "blocked.test" = "FROBNICATE" }'))
    p = d2.cli("check", check=False)
    assert p.returncode == 1 and "unknown action" in p.stderr


def test_check_config_that_sleeps_is_stopped_by_the_time_limit(daemon_factory):
    # Sleeping is waiting in a WASI clock, where no guest code runs: the
    # host's wall-clock backstop ends it, so check and reload cannot hang.
    d = daemon_factory(extra=access_plugin('{ "blocked.test" = "REJECT" }'))
    d.rewrite(extra=misbehave("sleepy", "sleep-config", "x@"))
    started = time.monotonic()
    p = d.cli("check", check=False)
    assert p.returncode == 1
    assert "chain.rcpt[0] (sleepy): check-config failed: time limit exceeded" in p.stderr, p.stderr
    p = d.cli("reload", check=False)
    assert p.returncode == 1 and "time limit exceeded" in p.stderr
    assert time.monotonic() - started < 30
    assert send(d, "x@blocked.test", "alice@example.test")[0] == 554


def test_failed_reload_keeps_the_old_generation(daemon_factory):
    d = daemon_factory(extra=access_plugin('{ "blocked.test" = "REJECT" }'))
    d.rewrite(extra=access_plugin('{ "blocked.test" = "NONSENSE" }'))
    p = d.cli("reload", check=False)
    assert p.returncode == 1 and "unknown action" in p.stderr
    d.wait_log("reload failed, the old generation keeps serving")
    assert send(d, "x@blocked.test", "alice@example.test")[0] == 554
    # A config that does not even parse fails the same way.
    d.config.write_text(d.config_text + "\nbogus_key = 1\n")
    assert d.cli("reload", check=False).returncode == 1
    assert send(d, "x@blocked.test", "alice@example.test")[0] == 554


def test_reload_refuses_what_only_a_restart_can_do(daemon_factory):
    # [wasm] is fixed at start: a plugin memory_limit that only a bigger
    # wasm.max_memory would allow cannot be reloaded; other [wasm] changes
    # are reported as waiting for the restart.
    d = daemon_factory(extra=access_plugin('{ "blocked.test" = "REJECT" }'))
    bigger = access_plugin('{ "blocked.test" = "REJECT" }').replace(
        'name = "access"\n', 'name = "access"\nmemory_limit = "200M"\n', 1)
    d.rewrite(extra='max_memory = "256M"\n' + bigger)
    p = d.cli("reload", check=False)
    assert p.returncode == 1 and "a restart is needed" in p.stderr, p.stderr
    d.rewrite(extra='keep_resident = "1M"\n' + access_plugin('{ "other.test" = "REJECT" }'))
    d.cli("reload")
    d.wait_log("reload: [wasm] changes take effect at the next restart")
    assert send(d, "x@other.test", "alice@example.test")[0] == 554


def test_hot_swap_under_load(daemon_factory):
    d = daemon_factory(smtp="max_connections_per_ip = 200",
                       extra=access_plugin('{ "a.test" = "REJECT" }'))
    stop = threading.Event()
    failures, sent = [], [0]

    def load():
        while not stop.is_set():
            try:
                r = send(d, "neutral@c.test", "bob@example.test", subject="load")
                if r != (250, 250):
                    failures.append(r)
                sent[0] += 1
            except (smtplib.SMTPException, OSError) as e:
                failures.append(repr(e))

    workers = [threading.Thread(target=load) for _ in range(6)]
    for w in workers:
        w.start()
    time.sleep(0.5)
    # A transaction under way at the reload keeps generation 1 ...
    old = d.smtp()
    old.ehlo("client.test")
    old.mail("x@a.test")
    d.rewrite(smtp="max_connections_per_ip = 200", extra=access_plugin('{ "b.test" = "REJECT" }'))
    p = d.cli("reload")
    assert "generation 2" in p.stdout
    assert old.rcpt("alice@example.test")[0] == 554
    old.rset()
    # ... and the session's next transaction runs on generation 2.
    old.mail("x@a.test")
    assert old.rcpt("alice@example.test")[0] == 250
    old.rset()
    old.mail("x@b.test")
    assert old.rcpt("alice@example.test")[0] == 554
    old.quit()
    # ... new sessions get generation 2.
    assert send(d, "x@a.test", "alice@example.test") == (250, 250)
    assert send(d, "x@b.test", "alice@example.test")[0] == 554
    # SIGHUP reloads too.
    d.rewrite(smtp="max_connections_per_ip = 200", extra=access_plugin('{ "c2.test" = "REJECT" }'))
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log("generation 3 serves new sessions")
    assert send(d, "x@c2.test", "alice@example.test")[0] == 554
    assert send(d, "x@b.test", "alice@example.test") == (250, 250)
    time.sleep(0.5)
    stop.set()
    for w in workers:
        w.join(20)
    assert failures == [], failures[:5]
    assert sent[0] > 20
    d.wait_mail("bob", count=sent[0], timeout=30)


def test_same_component_twice_with_different_configs(daemon_factory):
    extra = f"""
[[plugin]]
name = "access"
path = "{plugin_path('access')}"

[[chain.rcpt]]
plugin = "access"
name = "senders"
config.sender = {{ "one.test" = "REJECT" }}

[[chain.rcpt]]
plugin = "access"
name = "recipients"
config.recipient = {{ "bob@example.test" = "550 5.7.1 Bob is away" }}
"""
    d = daemon_factory(extra=extra)
    assert send(d, "x@one.test", "alice@example.test")[0] == 554
    assert send(d, "x@two.test", "bob@example.test")[0] == 550
    assert send(d, "x@two.test", "alice@example.test") == (250, 250)
    d.wait_log("plugin=recipients")


def test_delay_reject_reports_connect_rejects_at_rcpt(daemon_factory):
    rules = """
[[plugin]]
name = "access"
path = "{path}"
[[chain.connect]]
plugin = "access"
config.client = {{ "127.0.0.2" = "REJECT" }}
""".format(path=plugin_path("access"))
    d = daemon_factory(extra=rules)
    # Step by step: 127.0.0.2 is not trusted, and an untrusted client
    # that pipelines its EHLO is refused before any of this.
    with d.smtp(source="127.0.0.2") as s:
        assert s.ehlo("c.test")[0] == 250
        assert s.mail("a@x.test") == (250, b"2.1.0 Ok")
        code, resp = s.rcpt("alice@example.test")
        assert code == 554 and resp.startswith(b"5.7.1") and b"Client host rejected" in resp, resp
    assert send(d, "a@x.test", "alice@example.test") == (250, 250)
    d2 = daemon_factory(name="nodelay", smtp="delay_reject = false", extra=rules)
    out = raw_session(d2.port, b"EHLO c.test\r\n", source="127.0.0.2")
    assert out.startswith("554 5.7.1") and "220" not in out


def test_header_actions_quarantine_and_discard(daemon_factory):
    extra = misbehave("tagger", "header", "alice@") + misbehave("holder", "quarantine", "bob@")
    d = daemon_factory(extra=extra)
    assert send(d, "a@example.org", "alice@example.test", subject="tagged") == (250, 250)
    [f] = d.wait_mail("alice")
    assert "X-Misbehave: yes" in f.read_text()
    assert send(d, "a@example.org", "bob@example.test", subject="held") == (250, 250)
    time.sleep(0.5)
    assert d.new_mail("bob") == []
    out = d.cli("queue", "list").stdout
    assert "held: misbehave holds it (plugin holder)" in out
    # The operator releases it (postsuper -H): delivered, with the header.
    [held] = [line.split("!")[0] for line in out.splitlines() if re.match(r"^\S+! ", line)]
    assert d.cli("queue", "release", held).returncode == 0
    [f] = d.wait_mail("bob")
    assert "Subject: held" in f.read_text()
    deadline = time.time() + 10
    while not d.cli("queue", "list").stdout.startswith("Mail queue is empty"):
        assert time.time() < deadline, "the released message stayed in the queue"
        time.sleep(0.1)
    # ... or deletes one (postsuper -d); a wrong ID is refused.
    assert send(d, "a@example.org", "bob@example.test", subject="held again") == (250, 250)
    out = d.cli("queue", "list").stdout
    [held] = [line.split("!")[0] for line in out.splitlines() if re.match(r"^\S+! ", line)]
    assert d.cli("queue", "delete", held).returncode == 0
    assert d.cli("queue", "list").stdout.startswith("Mail queue is empty")
    p = d.cli("queue", "release", held, check=False)
    assert p.returncode == 1 and "no held message" in p.stderr
    assert d.cli("queue", "delete", "../../etc\nreload", check=False).returncode != 0
    d.wait_log(f"{held}: deleted on the admin socket")
    time.sleep(0.5)
    assert len(d.new_mail("bob")) == 1
    d2 = daemon_factory(name="discard", extra=misbehave("dropper", "discard", "alice@"))
    assert send(d2, "a@example.org", "alice@example.test") == (250, 250)
    time.sleep(0.5)
    assert d2.new_mail("alice") == [] and d2.queue_files() == []
    d2.wait_log("discarded: misbehave drops it (plugin dropper)")


def python_plugin(reuse=True, scoring=""):
    if not PYTHON_PLUGIN.exists():
        pytest.fail(f"{PYTHON_PLUGIN} not built (examples/plugins/python-subject-score/build.sh)")
    return f"""
[[plugin]]
name = "subject-score"
path = "{PYTHON_PLUGIN}"
reuse_instances = {str(reuse).lower()}
memory_limit = "128M"
time_limit = "2s"

[[chain.data]]
plugin = "subject-score"
config.words = {{ viagra = 5.0, lottery = 3.0 }}
config.reject = ["forbidden-word"]
{scoring}
"""


def test_python_plugin_through_the_daemon(daemon_factory):
    d = daemon_factory(extra=python_plugin())
    with d.smtp() as s:
        s.sendmail("a@example.org", ["alice@example.test"],
                   message(subject="You won the lottery", body="cheap viagra\r\n"))
        s.sendmail("a@example.org", ["bob@example.test"], message(subject="lunch", body="noon?\r\n"))
        s.ehlo("client.test")
        s.mail("a@example.org")
        s.rcpt("alice@example.test")
        code, resp = s.data(message(subject="x", body="a forbidden-word here\r\n"))
        assert code == 554 and resp.startswith(b"5.7.1")
    [f] = d.wait_mail("alice")
    text = f.read_text()
    assert "X-Spam-Words: lottery, viagra" in text
    assert "X-Postern-Score: 8.00 (WORD_LOTTERY=3.00, WORD_VIAGRA=5.00)" in text
    [g] = d.wait_mail("bob")
    assert "X-Spam-Words" not in g.read_text()
    d.wait_log_re(r"score 8\.00 \(WORD_LOTTERY=3\.00 WORD_VIAGRA=5\.00\)")


def test_scores_judged_against_thresholds(daemon_factory):
    d = daemon_factory(extra=python_plugin(scoring="[scoring]\nreject = 7.0\ntempfail = 4.0\n"))
    with d.smtp() as s:
        s.ehlo("client.test")
        for subject, body, want in [
            ("lottery", "hi\r\n", None),          # 3 points: below both
            ("viagra", "hi\r\n", 451),            # 5 points: tempfail
            ("lottery", "viagra\r\n", 554),       # 8 points: reject
        ]:
            s.mail("a@example.org")
            s.rcpt("alice@example.test")
            code, resp = s.data(message(subject=subject, body=body))
            if want is None:
                assert code == 250
            else:
                assert code == want, (code, resp)
                assert b"policy score" in resp or b"Policy score" in resp
    d.wait_log_re(r"score 8\.00 \(WORD_LOTTERY=3\.00 WORD_VIAGRA=5\.00\) at data: 554 5\.7\.1")


def test_plugin_test_command_runs_fixtures():
    fixtures = [
        ROOT / "plugins" / "access" / "tests" / "access.toml",
        ROOT / "plugins" / "access" / "tests" / "quickstart.json",
        ROOT / "plugins" / "access" / "tests" / "header_checks.toml",
        ROOT / "plugins" / "access" / "tests" / "regexp.toml",
        ROOT / "tests" / "fixtures" / "misbehave-loop.toml",
        ROOT / "tests" / "fixtures" / "misbehave-hog.toml",
        ROOT / "tests" / "fixtures" / "misbehave-trap.toml",
        ROOT / "examples" / "plugins" / "python-subject-score" / "tests.toml",
    ]
    p = subprocess.run([str(BIN), "plugin", "test", *CACHE_ARGS,
                        *map(str, fixtures)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("ok   - ") == 15 + 2 + 3 + 4 + 3 + 3
    # A fixture whose expectation is wrong fails, with the reason.
    bad = ROOT / "target" / "bad-fixture.toml"
    bad.write_text((ROOT / "tests" / "fixtures" / "misbehave-trap.toml").read_text()
                   .replace('verdict = "failure"', 'verdict = "accept"')
                   .replace("../../target", str(ROOT / "target")))
    p = subprocess.run([str(BIN), "plugin", "test", *CACHE_ARGS,
                        str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1
    assert "FAIL - " in p.stdout and "verdict failure (expected accept)" in p.stdout
    # A fixture tells failure kinds apart: the trap is not a time limit.
    bad.write_text((ROOT / "tests" / "fixtures" / "misbehave-trap.toml").read_text()
                   .replace('failure = "trap"', 'failure = "time"')
                   .replace("../../target", str(ROOT / "target")))
    p = subprocess.run([str(BIN), "plugin", "test", *CACHE_ARGS,
                        str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1
    assert "failures [\"trap\"] (expected a time failure)" in p.stdout, p.stdout


def scoring_chain(*entries, scoring="[scoring]\nreject = 5.0\n"):
    """The misbehave plugin on the given (stage, mode, when_rcpt) entries."""
    text = f"""
[[plugin]]
name = "mb"
path = "{plugin_path('misbehave')}"
"""
    for i, (stage, mode, when) in enumerate(entries):
        cfg = f'mode = "{mode}"' + (f', when_rcpt = "{when}"' if when else "")
        text += f"""
[[chain.{stage}]]
plugin = "mb"
name = "mb-{stage}-{i}"
config = {{ {cfg} }}
"""
    return text + scoring


def test_helo_score_counts_once_however_often_the_client_greets(daemon_factory):
    # EHLO, STARTTLS, EHLO is the normal sequence on port 25: the HELO
    # stage's score (3) must not count twice (6 would reach reject = 5).
    d = daemon_factory(extra=scoring_chain(("helo", "score", None)))
    with d.smtp() as s:
        for _ in range(3):
            s.ehlo("client.test")
        s.starttls()
        s.ehlo("client.test")
        assert s.mail("a@example.org")[0] == 250
        assert s.rcpt("alice@example.test")[0] == 250
        assert s.data(message(subject="greeted often"))[0] == 250
    [f] = d.wait_mail("alice")
    assert "X-Postern-Score: 3.00 (MISBEHAVE=3.00)" in f.read_text()


def test_rcpt_score_counts_once_per_transaction(daemon_factory):
    d = daemon_factory(extra=scoring_chain(("rcpt", "score", None)))
    with d.smtp() as s:
        s.ehlo("client.test")
        assert s.mail("a@example.org")[0] == 250
        assert s.rcpt("alice@example.test")[0] == 250
        assert s.rcpt("bob@example.test")[0] == 250
        assert s.data(message(subject="two recipients"))[0] == 250
    [f] = d.wait_mail("alice")
    assert "X-Postern-Score: 3.00 (MISBEHAVE=3.00)" in f.read_text()


def test_refused_recipient_leaves_nothing_in_the_message(daemon_factory):
    # For trap@ one entry adds a header and the next refuses the recipient:
    # the header must not reach the message delivered to the others.
    d = daemon_factory(extra=scoring_chain(("rcpt", "header", "trap@"), ("rcpt", "reject", "trap@")))
    with d.smtp() as s:
        s.ehlo("client.test")
        assert s.mail("a@example.org")[0] == 250
        assert s.rcpt("trap@example.test")[0] == 550
        assert s.rcpt("bob@example.test")[0] == 250
        assert s.data(message(subject="one refused"))[0] == 250
    [f] = d.wait_mail("bob")
    assert "X-Misbehave" not in f.read_text()


def test_delayed_connect_reject_survives_starttls(daemon_factory):
    # delay_reject holds a connect-stage reject until RCPT; STARTTLS resets
    # the greeting, not what was decided about the connection.
    d = daemon_factory(extra=scoring_chain(("connect", "reject", None), scoring=""))
    with d.smtp() as s:
        s.ehlo("client.test")
        s.starttls()
        # No EHLO after STARTTLS (smtplib's mail() would send one).
        assert s.docmd("MAIL FROM:<a@example.org>")[0] == 250
        code, resp = s.docmd("RCPT TO:<alice@example.test>")
        assert code == 550 and b"misbehave says no" in resp, (code, resp)


def test_a_plugin_cannot_flood_the_log(daemon_factory):
    d = daemon_factory(extra=scoring_chain(("rcpt", "chatty", None), scoring=""))
    assert send(d, "a@example.org", "alice@example.test") == (250, 250)
    d.wait_log("more than 100 log lines in one call; dropping the rest")
    log = d.log_text()
    assert "chatty line 99" in log and "chatty line 100" not in log
    # The next call may log again.
    assert send(d, "a@example.org", "alice@example.test") == (250, 250)
    d.wait_mail("alice", count=2)
    d.wait_log_re(r"chatty line 0(.|\n)*chatty line 0")


def test_flush_picks_up_what_was_put_into_the_queue_by_hand(daemon_factory):
    d = daemon_factory(extra=misbehave("holder", "quarantine", "bob@"))
    assert send(d, "a@example.org", "bob@example.test", subject="by hand") == (250, 250)
    spool = d.dir / "var" / "spool"
    deadline = time.time() + 10
    while not [p for p in (spool / "hold").iterdir() if "." not in p.name]:
        assert time.time() < deadline
        time.sleep(0.05)
    [held] = [p for p in (spool / "hold").iterdir() if "." not in p.name]
    # An operator moves it back by hand (without its hold reason): the
    # daemon does not know of it until a flush.
    held.rename(spool / "queue" / held.name)
    (spool / "hold" / f"{held.name}.state").unlink()
    time.sleep(0.3)
    assert d.new_mail("bob") == []
    d.cli("queue", "flush")
    [f] = d.wait_mail("bob")
    assert "Subject: by hand" in f.read_text()
    d.wait_log(f"{held.name}: found in the queue by a flush")


def test_compiled_plugins_are_cached_on_disk_and_a_bad_artifact_is_recompiled(daemon_factory, tmp_path):
    # Compiling happens once per component and engine; later starts load
    # the artifact. A damaged artifact is ignored and replaced, and one
    # that others could have written is never loaded (it is machine code).
    cache = tmp_path / "cache"
    config = BASE_CONFIG.replace('cache_dir = "{cache}"', f'cache_dir = "{cache}"')
    d = daemon_factory(start=False, config=config, extra=access_plugin('{ "blocked.test" = "REJECT" }'))

    def run_once():
        """Starts, checks the policy works, stops; returns the log of this run."""
        before = len(d.log_text())
        d.start()
        assert send(d, "spam@blocked.test", "alice@example.test")[0] == 554
        d.stop()
        return d.log_text()[before:]

    log = run_once()
    assert "compiled in" in log, log
    [artifact] = cache.glob("*.cwasm")
    first = artifact.stat()

    # Loaded, not compiled: by the daemon and by `postern check`.
    log = run_once()
    assert "compiled in" not in log, log
    d.cli("check")
    assert list(cache.glob("*.cwasm")) == [artifact]
    assert artifact.stat().st_ino == first.st_ino  # not written again

    # Damaged (say, by a bad block): compiled again and rewritten.
    artifact.write_bytes(artifact.read_bytes()[:4096])
    log = run_once()
    assert "ignoring unusable plugin cache file" in log and "compiled in" in log, log
    assert artifact.stat().st_size == first.st_size
    assert "compiled in" not in run_once()

    # Writable by the group: not trusted, compiled instead.
    artifact.chmod(0o664)
    log = run_once()
    assert "others than this user could have written it" in log and "compiled in" in log, log

    # Eviction: artifacts no generation used for a week go, as do the
    # leftovers of interrupted writes; the ones in use and recent ones stay
    # (the one in use is marked used even though it is old).
    week = 8 * 24 * 3600
    old, recent, torn = cache / ("0" * 64 + ".cwasm"), cache / ("1" * 64 + ".cwasm"), cache / ("2" * 64 + ".tmp4242")
    foreign = [cache / "notes.cwasm", cache / "x.tmp", cache / ("3" * 64 + ".tmp")]  # not names it makes
    for f in (old, recent, torn, *foreign):
        f.write_bytes(b"x" * 2048)
    now = time.time()
    for f in (old, *foreign):
        os.utime(f, (now - week, now - week))
    os.utime(torn, (now - 7200, now - 7200))
    os.utime(artifact, (now - week, now - week))
    d.start()
    d.wait_log("plugin cache: removed 2 files")
    d.stop()
    assert sorted(cache.iterdir()) == sorted([artifact, recent, *foreign])
    assert artifact.stat().st_mtime > now - 60


def test_access_regexp_tables_through_the_daemon(daemon_factory):
    extra = f"""
[[plugin]]
name = "access"
path = "{plugin_path('access')}"

[[chain.helo]]
plugin = "access"
config.helo_regexp = [['^\\[?[0-9.]+\\]?$', "REJECT Bare IP address in HELO"]]
"""
    d = daemon_factory(extra=extra)
    with d.smtp() as s:
        # smtpd_delay_reject: the HELO verdict is given at RCPT.
        assert s.ehlo("192.0.2.1")[0] == 250
        assert s.mail("sender@example.org")[0] == 250
        code, text = s.rcpt("alice@example.test")
        assert code == 554 and b"<192.0.2.1>: Helo command rejected: Bare IP address in HELO" in text, text
    with d.smtp() as s:
        assert s.ehlo("client.test")[0] == 250
        assert s.mail("sender@example.org")[0] == 250
        assert s.rcpt("alice@example.test")[0] == 250
        assert s.data(message(subject="kept"))[0] == 250
    d.wait_mail("alice")
