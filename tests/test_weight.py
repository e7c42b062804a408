"""The weight plugin against the real policyd-weight (issue 14, item 5),
through the daemon: the same SMTP session goes to one Postern that asks
policyd-weight over the policy-service bridge and to one that runs the
weight plugin (with `decide = true`, policyd-weight's own answers); both
must give the same reply code (250, 450 or 550)."""

import smtplib

import pytest

from conftest import plugin_path
from test_policy_service import chain, policyd_weight  # noqa: F401  (the fixture)

LISTS = """
config.decide = true
config.dnsbl = [{ zone = "dnsbl.test", hit = 4.35, miss = -1.5, name = "DNSBL_TEST" }]
config.rhsbl = [{ zone = "rhsbl.test", hit = 4, miss = 0, name = "RHSBL_TEST" }]
"""

WEIGHT = f"""
[[plugin]]
name = "weight"
path = "{plugin_path('weight')}"
grants = ["dns"]

[[chain.rcpt]]
plugin = "weight"
{LISTS}
"""

# (client address, HELO, sender, recipient): the scenarios of
# plugins/weight/README.md that a real client can play (its address on lo,
# its name from the DNS peer), and more.
SCENARIOS = [
    ("198.18.0.25", "mail.good.test", "bob@good.test", "alice@example.test"),
    ("127.0.0.2", "client.example.test", "a@example.test", "alice@example.test"),
    ("127.0.0.99", "dyn-127-0-0-99.pool.test", "x@spammer.test", "alice@example.test"),
    ("127.0.0.99", "spammer.test", "x@spammer.test", "alice@example.test"),
    ("198.18.0.25", "[198.18.0.25]", "bob@good.test", "alice@example.test"),
    ("198.18.0.25", "mail.good.test", "", "alice@example.test"),
    ("127.0.0.2", "client.example.test", "a@example.test", "postmaster@example.test"),
    ("198.18.0.25", "mail.good.test", "x@nomx.test", "alice@example.test"),
    ("198.18.0.25", "mail.good.test", "x@nullmx.test", "alice@example.test"),
    ("198.18.0.25", "mail.good.test", "x@doesnotexist.test", "alice@example.test"),
    ("198.18.0.25", "dsl-1-2-3-4.dyn.example.test", "bob@good.test", "alice@example.test"),
    ("127.0.0.10", "mx1.dest.test", "a@dest.test", "alice@example.test"),
    ("127.0.0.2", "client.example.test", "nobody@example.test", "alice@example.test"),
    ("198.18.0.25", "mail.good.test", "xkcdqwrtz@good.test", "alice@example.test"),
    ("198.18.0.25", "mail.good.test", "a@sub.mail.good.test", "alice@example.test"),
    ("127.0.0.2", "foo.example.org", "a@example.test", "alice@example.test"),
    ("127.0.0.11", "mx2.dest.test", "a@good.test", "alice@example.test"),
    ("198.18.0.25", "nonexistent.invalid", "bob@good.test", "alice@example.test"),
    ("127.0.0.2", "client.example.test", "a@spammer.test", "alice@example.test"),
    ("127.0.0.12", "nomx.test", "a@nomx.test", "alice@example.test"),
    ("127.0.0.99", "mail.good.test", "bob@good.test", "alice@example.test"),
    ("198.18.0.25", "mail.good.test", "someone@spf-fail.test", "alice@example.test"),
    ("127.0.0.10", "mx1.dest.test", "a@example.test", "abuse@example.test"),
]


def outcome(port, client, helo, sender, rcpt):
    with smtplib.SMTP("127.0.0.1", port, source_address=(client, 0), timeout=30) as s:
        s.ehlo(helo)
        assert s.mail(sender)[0] == 250
        code, text = s.rcpt(rcpt)
    return code // 100, code, text.decode()


def test_the_weight_plugin_agrees_with_policyd_weight_on_every_scenario(daemon_factory, policyd_weight):  # noqa: F811
    real = daemon_factory(name="real", extra=chain("inet:127.0.0.1:12525", timeout="20s"))
    port = daemon_factory(name="port", extra=WEIGHT)
    rows, differ = [], []
    for sc in SCENARIOS:
        want = outcome(real.port, *sc)
        got = outcome(port.port, *sc)
        rows.append(f"{sc}: policyd-weight {want[1]} {want[2][:60]!r} / weight {got[1]} {got[2][:60]!r}")
        if want[1] != got[1]:
            differ.append(rows[-1])
    print("\n".join(rows))
    assert not differ, "\n".join(differ)
    # Not every scenario answers alike: the set covers accepts, 4xx and 5xx.
    classes = {outcome(port.port, *sc)[0] for sc in SCENARIOS[:10]}
    assert classes == {2, 4, 5}, classes


def test_accepted_mail_carries_the_weighting_in_x_postern_score(daemon_factory):
    d = daemon_factory(extra=WEIGHT)
    with smtplib.SMTP("127.0.0.1", d.port, source_address=("198.18.0.25", 0), timeout=30) as s:
        s.ehlo("mail.good.test")
        assert s.sendmail("bob@good.test", ["alice@example.test"], b"Subject: w\r\n\r\nhi\r\n") == {}
    [f] = d.wait_mail("alice")
    head = f.read_text().split("\n\n", 1)[0]
    assert "X-Postern-Score: -4.60 (PW_NOT_IN_DNSBL_TEST=-1.50, PW_CL_IP_EQ_FROM_MX=-3.10)" in head, head


if __name__ == "__main__":
    pytest.main([__file__, "-s"])
