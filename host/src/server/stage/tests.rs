//! The stages' decisions on a real generation (config, routing tables),
//! without sockets or plugins.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use super::{By, Judge, SmtpSession};
use crate::config::Config;
use crate::config::tests::MINIMAL;
use crate::plugin::SessionInfo;
use crate::server::generation::Generation;
use crate::smtp::address::{ForwardPath, ReversePath, parse_forward_path, parse_reverse_path};
use crate::smtp::command::{EsmtpParams, MailParams};
use crate::smtp::session::Session;

async fn generation() -> Generation {
    // The config tests' smallest config, with bob as a second user.
    let text = MINIMAL.replace(r#"users = ["alice"]"#, r#"users = ["alice", "bob"]"#);
    let config = Config::from_toml(&text, Path::new("t.toml")).expect("config");
    Generation::build(config, 1, None)
        .await
        .expect("generation")
}

/// A judge and a session from an untrusted client, in a transaction.
async fn in_transaction(g: &Generation, user: Option<&str>) -> (Judge, SmtpSession) {
    let peer: IpAddr = "192.0.2.1".parse().unwrap();
    let mut session = Session::new(g.listeners[0].session.clone(), peer, None);
    session.auth_user = user.map(str::to_string);
    let mut judge = Judge::new(g, SessionInfo::default(), peer, "unknown[192.0.2.1]".into());
    let from = ReversePath::Null;
    let params = MailParams::default();
    let held = judge.mail(g, &session, "Q1", &from, &params).await;
    assert!(matches!(held, Ok(None)));
    let _ = session.mail_done(
        "Q1".into(),
        from,
        params,
        crate::smtp::session::Decision::Accept(None),
    );
    (judge, session)
}

fn to(address: &str) -> ForwardPath {
    parse_forward_path(address, false).expect("address")
}

#[tokio::test]
async fn relay_control_refuses_other_domains_to_untrusted_clients_only() {
    let g = generation().await;
    let params = EsmtpParams::default();
    let (mut judge, session) = in_transaction(&g, None).await;
    let refusal = judge
        .rcpt(&g, &session, &to("x@elsewhere.test"), &params)
        .await
        .expect_err("relaying refused");
    assert_eq!(refusal.by, By::Host);
    assert_eq!(
        refusal.reply.summary(),
        "554 5.7.1 <x@elsewhere.test>: Relay access denied"
    );
    assert_eq!(refusal.by_plugin(), "");
    let (mut judge, session) = in_transaction(&g, Some("alice")).await;
    let route = judge
        .rcpt(&g, &session, &to("x@elsewhere.test"), &params)
        .await
        .expect("an authenticated client relays");
    assert!(!route.is_empty());
}

#[tokio::test]
async fn routing_refuses_unknown_local_users() {
    let g = generation().await;
    let params = EsmtpParams::default();
    let (mut judge, session) = in_transaction(&g, None).await;
    let refusal = judge
        .rcpt(&g, &session, &to("nobody@example.test"), &params)
        .await
        .expect_err("unknown user");
    assert_eq!(refusal.by, By::Host);
    assert_eq!(
        refusal.reply.summary(),
        "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown in local recipient table"
    );
    let route = judge
        .rcpt(&g, &session, &to("postmaster@example.test"), &params)
        .await
        .expect("an alias of a local user");
    assert_eq!(route.len(), 1);
}

#[tokio::test]
async fn an_authenticated_client_uses_only_its_own_senders() {
    let g = generation().await;
    let peer: IpAddr = "192.0.2.1".parse().unwrap();
    let mut session = Session::new(g.listeners[0].session.clone(), peer, None);
    session.auth_user = Some("alice@example.test".into());
    let mut judge = Judge::new(&g, SessionInfo::default(), peer, "c".into());
    let bob = parse_reverse_path("bob@example.test", false).expect("address");
    let refusal = judge
        .mail(&g, &session, "Q1", &bob, &MailParams::default())
        .await
        .expect_err("not alice's");
    assert_eq!(refusal.by, By::Host);
    assert_eq!(
        refusal.reply.summary(),
        "553 5.7.1 <bob@example.test>: Sender address rejected: not owned by user alice@example.test"
    );
    let decision: crate::smtp::session::Decision<()> = Err(refusal).into();
    assert!(matches!(decision, crate::smtp::session::Decision::Reject(r) if r.code == 553));
}

#[tokio::test]
async fn vrfy_confirms_local_users_only() {
    let g = generation().await;
    let router = Arc::clone(&g.router);
    assert_eq!(super::vrfy(&router, "<alice@example.test>").code, 250);
    assert_eq!(super::vrfy(&router, "nobody@example.test").code, 550);
    assert_eq!(super::vrfy(&router, "x@elsewhere.test").code, 252);
    assert_eq!(super::vrfy(&router, "<@@>").code, 501);
}
