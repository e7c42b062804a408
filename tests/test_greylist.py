"""The greylist plugin on the kv capability (issue 14, items 7 and 8): the
example config as its contract says, and two Postern processes sharing
one real redis-server, through real SMTP sessions."""

import subprocess
import time

from conftest import BIN, ROOT, example_daemon, plugin_path, swaks
from test_plugin_caps import redis, redis_kv  # noqa: F401  (the redis fixture)

GREYLIST = "450 4.7.1 Greylisted, see https://postgrey.schweikert.ch/help/example.test.html"


def greylist(delay, **keys):
    lines = [
        "[[plugin]]",
        'name = "greylist"',
        f'path = "{plugin_path("greylist")}"',
        'grants = ["kv"]',
        "[[chain.rcpt]]",
        'plugin = "greylist"',
        'kv_namespace = "greylist"',
        f"config.delay = {delay}",
    ] + [f"config.{k} = {v}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def attempt(port, source="127.0.0.2", sender="someone@example.org", rcpt="alice@example.test"):
    """One RCPT from `source`: (code, text)."""
    import smtplib

    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=20) as s:
        s.ehlo("client.example.test")
        assert s.mail(sender)[0] == 250
        code, resp = s.rcpt(rcpt)
        return code, resp.decode()


def test_two_nodes_on_one_redis_share_their_triplets(daemon_factory, redis):  # noqa: F811
    extra = redis_kv(redis.url, timeout="1s") + greylist(3)
    a = daemon_factory(name="a", extra=extra)
    b = daemon_factory(name="b", extra=extra)
    # First sighting on node a; node b knows the triplet and its age.
    code, text = attempt(a.port)
    assert (code, text) == (450, GREYLIST[4:]), text
    first = time.time()
    code, text = attempt(b.port)
    assert code == 450, text
    # Another triplet (another sender) is greylisted on its own.
    assert attempt(b.port, sender="other@example.org")[0] == 450
    while time.time() - first < 3.3:
        time.sleep(0.1)
    # After the delay, node b lets through what node a saw first ...
    code, text = attempt(b.port)
    assert code == 250, text
    # ... and node a keeps letting it through.
    assert attempt(a.port)[0] == 250
    # Trusted clients are never greylisted.
    assert attempt(a.port, source="127.0.0.1", sender="new@example.org")[0] == 250


def test_a_store_failure_lets_mail_through_by_default_or_tempfails(daemon_factory, redis):  # noqa: F811
    open_ = daemon_factory(name="open", extra=redis_kv(redis.url, timeout="500ms") + greylist(60))
    closed = daemon_factory(name="closed", extra=redis_kv(redis.url, timeout="500ms")
                            + greylist(60, on_kv_error='"tempfail"'))
    assert attempt(open_.port)[0] == 450
    redis.stop()
    code, text = attempt(open_.port, sender="x@example.org")
    assert code == 250, text
    code, text = attempt(closed.port, sender="y@example.org")
    assert code == 451 and text.startswith("4.3.0"), text


def test_the_embedded_store_keeps_triplets_across_a_restart(daemon_factory):
    d = daemon_factory(extra=greylist(2))
    assert attempt(d.port)[0] == 450
    first = time.time()
    d.stop()
    d.start()
    while time.time() - first < 2.3:
        time.sleep(0.1)
    code, text = attempt(d.port)
    assert code == 250, text


# --- examples/greylist/postern.toml --------------------------------------

EXAMPLE = ROOT / "examples" / "greylist" / "postern.toml"
SPOOL = ROOT / "var" / "greylist"


def test_the_greylist_example_greylists_then_accepts_after_its_delay(tmp_path):
    args = ("--server", "127.0.0.1:2525", "--local-interface", "127.0.0.2", "--helo", "client.example.test",
            "--from", "someone@example.org", "--to", "alice@example.test")
    with example_daemon("examples/greylist/postern.toml", SPOOL, tmp_path, (2525, 5870, 4650)):
        p = subprocess.run([str(BIN), "check", "--config", str(EXAMPLE)], capture_output=True, text=True, cwd=ROOT)
        assert p.returncode == 0, p.stderr
        rc, out = swaks(*args)
        assert rc != 0 and f"<** {GREYLIST}" in out, out
        first = time.time()
        while time.time() - first < 5.3:
            time.sleep(0.1)
        rc, out = swaks(*args)
        assert rc == 0 and "<-  250 2.0.0 Ok: queued as" in out, out
