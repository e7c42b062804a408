"""The standard restriction plugins (issue 14, item 4) one by one, in the
real daemon against the DNS peer's zones, from real client addresses on
lo. The seed's whole chain is in test_seed.py."""

import smtplib

from conftest import plugin_path


def entry(name, stage="rcpt", grants='["dns"]', **config):
    lines = ["[[plugin]]", f'name = "{name}"', f'path = "{plugin_path(name)}"']
    if grants:
        lines.append(f"grants = {grants}")
    lines += [f"[[chain.{stage}]]", f'plugin = "{name}"']
    lines += [f"config.{k} = {v}" for k, v in config.items()]
    return "\n".join(lines) + "\n"


def rcpt(d, source, helo="mail.good.test", sender="bob@good.test", to="alice@example.test"):
    with smtplib.SMTP("127.0.0.1", d.port, source_address=(source, 0), timeout=20) as s:
        s.ehlo(helo)
        code, text = s.mail(sender)
        if code != 250:
            return code, text.decode()
        code, text = s.rcpt(to)
        return code, text.decode()


def test_client_refuses_an_address_without_reverse_dns_and_takes_one_with(daemon_factory):
    d = daemon_factory(extra=entry("client", grants=None, reject_unknown_client_hostname="true"))
    # 127.0.0.3 has no PTR in the test zone.
    code, text = rcpt(d, "127.0.0.3")
    assert code == 450 and text.startswith("4.7.1") and "cannot find your reverse hostname, [127.0.0.3]" in text, text
    # 127.0.0.2 has a PTR (client.example.test) that resolves back.
    assert rcpt(d, "127.0.0.2", helo="client.example.test")[0] == 250


def test_helo_judges_at_the_helo_stage_too(daemon_factory):
    # At the helo stage; the host holds a refusal until RCPT
    # (smtpd_delay_reject), as Postfix does.
    d = daemon_factory(extra=entry("helo", stage="helo"))
    code, text = rcpt(d, "198.18.0.25", helo="no-such-host.test")
    assert code == 450 and "Host not found" in text, text
    code, text = rcpt(d, "198.18.0.25", helo="[300.1.2.3]")
    assert code == 501 and "invalid ip address" in text.lower(), text
    assert rcpt(d, "198.18.0.25")[0] == 250


def test_sender_and_recipient_refuse_null_mx_domains(daemon_factory):
    d = daemon_factory(extra=entry("sender") + entry("recipient"))
    code, text = rcpt(d, "198.18.0.25", sender="x@nullmx.test")
    assert code == 550 and text.startswith("5.7.27") and "nullmx.test" in text, text
    # A sender domain with MX, a recipient domain with MX: both pass.
    assert rcpt(d, "198.18.0.25")[0] == 250
    # A recipient domain with a null MX (here a relayed one, from the
    # trusted client, with skip_trusted off).
    t = daemon_factory(name="t", extra=entry("recipient", skip_trusted="false"),
                       client='relayhost = "[127.0.0.1]:9"')
    code, text = rcpt(t, "127.0.0.1", to="x@nullmx.test")
    assert code == 556 and text.startswith("5.1.10"), text


def test_spf_can_write_authentication_results(daemon_factory):
    d = daemon_factory(extra=entry("spf", header='"both"', authserv_id='"mx.example.test"'))
    with smtplib.SMTP("127.0.0.1", d.port, source_address=("198.18.0.25", 0), timeout=20) as s:
        s.ehlo("mail.good.test")
        assert s.sendmail("bob@good.test", ["alice@example.test"], b"Subject: spf\r\n\r\nhi\r\n") == {}
    [f] = d.wait_mail("alice")
    head = f.read_text().split("\n\n", 1)[0]
    assert "Authentication-Results: mx.example.test;" in head and "spf=pass" in head, head
    assert "Received-SPF: pass (mx.example.test:" in head, head
    # softfail continues by default, and says so in the header.
    with smtplib.SMTP("127.0.0.1", d.port, source_address=("198.18.0.25", 0), timeout=20) as s:
        s.ehlo("mail.good.test")
        assert s.sendmail("x@spf-soft.test", ["bob@example.test"], b"Subject: soft\r\n\r\nhi\r\n") == {}
    [f] = d.wait_mail("bob")
    assert "Received-SPF: softfail" in f.read_text(), f.read_text()


def test_dnsbl_as_a_score_adds_to_the_transaction(daemon_factory):
    d = daemon_factory(extra=entry("dnsbl", lists='[{ zone = "dnsbl.test", action = "score", points = 3.5 }]')
                       + "[scoring]\nreject = 3.0\n")
    code, text = rcpt(d, "127.0.0.2", helo="client.example.test")
    assert code == 554 and text.startswith("5.7.1"), text
    assert rcpt(d, "198.18.0.25")[0] == 250
