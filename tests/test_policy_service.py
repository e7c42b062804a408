"""The policy-service bridge: chain entries that ask a Postfix SMTPD policy
server. Against the real policyd-weight of the peers kit (127.0.0.1:12525,
over the kit's DNS zones), and against a small scripted policy server for
what policyd-weight does not answer (DEFER_IF_PERMIT, 4NN/5NN with enhanced
codes, time-outs, closed connections, connection reuse)."""

import socket
import socketserver
import subprocess
import threading
import time
import uuid

import pytest

from conftest import BIN, ROOT, example_daemon, message, swaks

POLICYD_WEIGHT = ("127.0.0.1", 12525)
SPAM_TEXT = "Mail appeared to be SPAM or forged"


def policyd_weight_running():
    try:
        with socket.create_connection(POLICYD_WEIGHT, timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def policyd_weight():
    if not policyd_weight_running():
        pytest.fail("policyd-weight is not running: ../shared/peers/start.sh dns policyd-weight")


def chain(address, stage="rcpt", **keys):
    lines = [f"[[chain.{stage}]]", f'policy_service = "{address}"']
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in keys.items()]
    return "\n".join(lines) + "\n"


class Policy(socketserver.ThreadingTCPServer):
    """A scripted policy server: `answer(attrs)` gives the action (None:
    say nothing and close). Records every request and connection."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answer):
        self.answer = answer
        self.requests = []
        self.connections = 0
        self.close_after_answer = False
        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def address(self):
        return f"inet:127.0.0.1:{self.server_address[1]}"


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        srv = self.server
        srv.connections += 1
        while True:
            attrs = {}
            while True:
                line = self.rfile.readline()
                if not line:
                    return
                line = line.decode().rstrip("\n")
                if not line:
                    break
                name, _, value = line.partition("=")
                attrs[name] = value
            srv.requests.append(attrs)
            action = srv.answer(attrs)
            if action is None:
                return
            self.wfile.write(f"action={action}\n\n".encode())
            self.wfile.flush()
            if srv.close_after_answer:
                return


@pytest.fixture
def policy():
    made = []

    def make(answer):
        p = Policy(answer)
        made.append(p)
        return p

    yield make
    for p in made:
        p.shutdown()
        p.server_close()


def rcpt(d, rcpts, source="127.0.0.1", helo="client.test", sender="someone@example.org", data=True):
    """One session: the RCPT replies, then DATA's code (or None)."""
    with d.smtp(source=source) as s:
        s.ehlo(helo)
        assert s.mail(sender)[0] == 250
        replies = [s.rcpt(r) for r in rcpts]
        code = None
        if data and any(c == 250 for c, _ in replies):
            code = s.data(message(subject="policy"))[0]
        return replies, code


# --- against the real policyd-weight ------------------------------------


def test_policyd_weight_rejects_a_listed_client_with_its_text(daemon_factory, policyd_weight):
    d = daemon_factory(extra=chain("inet:127.0.0.1:12525", name="polw", timeout="10s"))
    # 127.0.0.2 is listed in dnsbl.test; its HELO does not match its name.
    [(code, text)], _ = rcpt(d, ["alice@example.test"], source="127.0.0.2")
    assert code == 550 and text.startswith(b"5.7.1 " + SPAM_TEXT.encode()), text
    d.wait_log_re(r"reject: RCPT from .*127\.0\.0\.2.*550 5\.7\.1 Mail appeared.*polw")


def test_policyd_weight_accepts_a_clean_client_and_its_header_is_in_the_mail(daemon_factory, policyd_weight):
    d = daemon_factory(extra=chain("inet:127.0.0.1:12525", name="polw", timeout="10s"))
    # mail.good.test: forward and reverse DNS agree, the sender's MX is the
    # client, not listed anywhere.
    replies, code = rcpt(d, ["alice@example.test"], source="198.18.0.25", helo="mail.good.test",
                         sender="alice@good.test")
    assert replies == [(250, b"2.1.5 Ok")] and code == 250, replies
    [f] = d.wait_mail("alice")
    text = f.read_text()
    assert "X-policyd-weight: " in text and "rate: -" in text, text
    assert text.index("X-policyd-weight:") < text.index("Subject: policy")


# --- against a scripted server ------------------------------------------


def test_every_request_carries_postfix_attributes_on_one_reused_connection(daemon_factory, policy):
    p = policy(lambda a: "DUNNO")
    d = daemon_factory(extra=chain(p.address, policy_context="ctx"))
    rcpt(d, ["alice@example.test", "bob@example.test"])
    rcpt(d, ["alice@example.test"])
    assert len(p.requests) == 3
    assert p.connections == 1, "one connection serves every request and session"
    first, second, third = p.requests
    for name, value in [("request", "smtpd_access_policy"), ("protocol_state", "RCPT"),
                        ("protocol_name", "ESMTP"), ("client_address", "127.0.0.1"),
                        ("helo_name", "client.test"), ("sender", "someone@example.org"),
                        ("recipient", "alice@example.test"), ("recipient_count", "0"),
                        ("server_address", "127.0.0.1"), ("server_port", str(d.port)),
                        ("policy_context", "ctx")]:
        assert first.get(name) == value, (name, first)
    for name in ["queue_id", "instance", "client_name", "reverse_client_name", "size", "sasl_method",
                 "sasl_username", "sasl_sender", "ccert_subject", "ccert_issuer", "ccert_fingerprint",
                 "ccert_pubkey_fingerprint", "encryption_protocol", "encryption_cipher",
                 "encryption_keysize", "etrn_domain", "stress", "compatibility_level", "mail_version"]:
        assert name in first, name
    assert second["recipient"] == "bob@example.test"
    # One instance per message, another for the next one.
    assert first["instance"] == second["instance"] != third["instance"]
    assert first["queue_id"] and first["queue_id"] in first["instance"]


def test_actions_map_to_replies_with_their_enhanced_codes(daemon_factory, policy):
    answers = {
        "alice@example.test": "451 4.7.1 Greylisted, come back later",
        "bob@example.test": "554 5.7.9 Go away",
        "postmaster@example.test": "REJECT",
        "abuse@example.test": "DEFER busy",
    }
    p = policy(lambda a: answers[a["recipient"]])
    d = daemon_factory(extra=chain(p.address))
    replies, _ = rcpt(d, list(answers))
    assert replies == [
        (451, b"4.7.1 Greylisted, come back later"),
        (554, b"5.7.9 Go away"),
        (554, b"5.7.1 Access denied"),
        (450, b"4.7.1 busy"),
    ], replies


def test_prepend_adds_its_header_and_ok_ends_the_stage(daemon_factory, policy):
    p = policy(lambda a: "PREPEND X-Policy-Test: seen " + a["recipient"])
    q = policy(lambda a: "OK")
    r = policy(lambda a: "REJECT never asked")
    d = daemon_factory(extra=chain(p.address) + chain(q.address) + chain(r.address))
    replies, code = rcpt(d, ["alice@example.test"])
    assert replies == [(250, b"2.1.5 Ok")] and code == 250, replies
    assert r.requests == [], "OK ends the stage's chain"
    [f] = d.wait_mail("alice")
    assert "X-Policy-Test: seen alice@example.test" in f.read_text()


def test_defer_if_permit_tempfails_unless_a_later_entry_rejects(daemon_factory, policy):
    p = policy(lambda a: "DEFER_IF_PERMIT 4.7.0 Come back later")
    q = policy(lambda a: "REJECT 5.7.1 No such luck" if a["recipient"].startswith("bob") else "DUNNO")
    d = daemon_factory(extra=chain(p.address, name="first") + chain(q.address, name="second"))
    replies, _ = rcpt(d, ["alice@example.test", "bob@example.test"])
    assert replies == [(450, b"4.7.0 Come back later"), (554, b"5.7.1 No such luck")], replies
    d.wait_log_re(r"450 4\.7\.0 Come back later.*first")


def test_defer_if_reject_and_hold_wait_for_the_end_of_the_stage(daemon_factory, policy):
    # DEFER_IF_REJECT: a later rejection becomes its tempfail; HOLD: the
    # message is held unless a later entry rejects (Postfix's DUNNO with a flag).
    p = policy(lambda a: {"alice": "HOLD look at it", "bob": "DEFER_IF_REJECT 4.7.1 Cannot verify now",
                          "postmaster": "HOLD never"}[a["recipient"].split("@")[0]])
    q = policy(lambda a: "DUNNO" if a["recipient"].startswith("alice") else "REJECT 5.7.1 No")
    d = daemon_factory(extra=chain(p.address, name="first") + chain(q.address, name="second"))
    replies, _ = rcpt(d, ["alice@example.test", "bob@example.test", "postmaster@example.test"], data=False)
    assert replies == [(250, b"2.1.5 Ok"), (450, b"4.7.1 Cannot verify now"), (554, b"5.7.1 No")], replies
    d.wait_log_re(r"hold: RCPT from .*look at it; plugin=first")
    assert "never" not in d.log_text()


def test_a_server_that_does_not_answer_in_time_gets_the_default_action(daemon_factory, policy):
    def slow(a):
        time.sleep(3)
        return "DUNNO"

    p = policy(slow)
    # Postfix's default: 451 4.3.5, only if the recipient would be accepted.
    d = daemon_factory(extra=chain(p.address, name="slow", timeout="1s", try_limit=1))
    start = time.time()
    [(code, text)], _ = rcpt(d, ["alice@example.test"])
    assert (code, text) == (451, b"4.3.5 Server configuration problem")
    assert time.time() - start < 2.5
    d.wait_log_re(r"policy service slow \(inet:127\.0\.0\.1:\d+\) failed at rcpt: no answer within 1s")
    # default_action DUNNO fails open.
    d2 = daemon_factory(name="open", extra=chain(p.address, timeout="1s", try_limit=1, default_action="DUNNO"))
    replies, code = rcpt(d2, ["alice@example.test"])
    assert replies == [(250, b"2.1.5 Ok")] and code == 250


def test_an_unreachable_server_or_a_bad_answer_gets_the_default_action(daemon_factory, policy):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"inet:127.0.0.1:{s.getsockname()[1]}"
    bad = policy(lambda a: "MAYBE later")
    d = daemon_factory(extra=chain(dead, name="dead", try_limit=1,
                                   default_action="DEFER 4.3.0 Policy service down")
                       .replace("[[chain.rcpt]]", "[[chain.mail]]")
                       + chain(bad.address, name="bad"))
    # Asked at MAIL; the answer comes at RCPT (delay_reject, as Postfix).
    replies, _ = rcpt(d, ["alice@example.test"])
    assert replies == [(450, b"4.3.0 Policy service down")], replies
    d.wait_log_re(r"policy service dead .*failed at mail: cannot connect")
    d2 = daemon_factory(name="bad", extra=chain(bad.address, name="bad"))
    [(code, text)], _ = rcpt(d2, ["alice@example.test"])
    assert (code, text) == (451, b"4.3.5 Server configuration problem")
    d2.wait_log_re(r"policy service bad .*failed at rcpt: bad answer: not an access\(5\) action")


def test_a_server_that_closes_its_connections(daemon_factory, policy):
    # Closing after each answer: every request gets a new connection, no
    # failure is logged.
    p = policy(lambda a: "DUNNO")
    p.close_after_answer = True
    d = daemon_factory(extra=chain(p.address, name="closing"))
    replies, _ = rcpt(d, ["alice@example.test", "bob@example.test"], data=False)
    assert replies == [(250, b"2.1.5 Ok")] * 2
    assert p.connections == 2
    assert "failed at" not in d.log_text()
    # Closing without an answer: tried try_limit times, then default_action.
    q = policy(lambda a: None)
    d2 = daemon_factory(name="mute", extra=chain(q.address, name="mute", default_action="REJECT 5.3.0 nope"))
    [(code, text)], _ = rcpt(d2, ["alice@example.test"])
    assert (code, text) == (554, b"5.3.0 nope")
    assert len(q.requests) == 2
    d2.wait_log("closed the connection without answering")


def test_bad_policy_service_entries_are_named_by_check(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[server]\nhostname = "mx.example.test"\nrun_as_root = true\n'
                   '[[listener]]\naddress = "127.0.0.1:2999"\n'
                   '[[chain.rcpt]]\npolicy_service = "127.0.0.1:12525"\ntimeout = "0s"\n'
                   '[[chain.mail]]\npolicy_service = "inet:127.0.0.1:12525"\ndefault_action = "MAYBE"\n')
    p = subprocess.run([str(BIN), "check", "--config", str(cfg)], capture_output=True, text=True)
    assert p.returncode != 0
    assert "chain.rcpt[0].policy_service" in p.stderr and "chain.rcpt[0].timeout" in p.stderr, p.stderr
    cfg.write_text(cfg.read_text().replace('"127.0.0.1:12525"\ntimeout = "0s"', '"inet:127.0.0.1:12525"'))
    p = subprocess.run([str(BIN), "check", "--config", str(cfg)], capture_output=True, text=True)
    assert p.returncode != 0 and "chain.mail[0].default_action" in p.stderr, p.stderr


# --- examples/policy-service/postern.toml -------------------------------

EXAMPLE = ROOT / "examples" / "policy-service" / "postern.toml"
SPOOL = ROOT / "var" / "policy-service"


def test_the_example_checks_and_rejects_what_policyd_weight_rejects(tmp_path, policyd_weight):
    with example_daemon("examples/policy-service/postern.toml", SPOOL, tmp_path, (2525, 5870, 4650)):
        p = subprocess.run([str(BIN), "check", "--config", str(EXAMPLE)], capture_output=True, text=True, cwd=ROOT)
        assert p.returncode == 0, p.stderr
        rc, out = swaks("--server", "127.0.0.1:2525", "--local-interface", "127.0.0.2", "--helo", "client.test",
                        "--from", "someone@example.org", "--to", "alice@example.test")
        assert rc != 0 and f"<** 550 5.7.1 {SPAM_TEXT}" in out, out
        token = uuid.uuid4().hex[:10]
        rc, out = swaks("--server", "127.0.0.1:2525", "--local-interface", "198.18.0.25", "--helo",
                        "mail.good.test", "--from", "alice@good.test", "--to", "alice@example.test",
                        "--header", f"Subject: policy {token}")
        assert rc == 0, out
        deadline = time.time() + 15
        found = []
        new = ROOT / "var" / "mail" / "alice" / "Maildir" / "new"
        while not found and time.time() < deadline:
            found = [f for f in new.iterdir() if token in f.read_text(errors="replace")] if new.is_dir() else []
            time.sleep(0.1)
        [f] = found
        assert "X-policyd-weight:" in f.read_text()
