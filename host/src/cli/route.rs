//! `postern route ADDRESS...`: what each address expands to and which
//! transport takes each result, from the configuration and tables on
//! disk (Postfix's `postmap -q` and `sendmail -bv`, for admins).

use std::path::Path;
use std::process::ExitCode;

use crate::config::{Config, Mailbox};
use crate::route::{RouteError, Router, Transport};
use crate::smtp::address::parse_forward_path;

/// The lines printed for one address, and whether it was accepted.
pub fn describe(router: &Router, address: &str) -> (Vec<String>, bool) {
    let written = address.trim().trim_start_matches('<').trim_end_matches('>');
    let path = match parse_forward_path(written, true) {
        Ok(p) => p,
        Err(e) => return (vec![format!("{written}: 501 5.1.3 {e}")], false),
    };
    match router.resolve(&path) {
        Ok(dests) => {
            let lines = dests
                .iter()
                .map(|d| {
                    // The transport a delivery attempt would pick for what
                    // the queue file will keep.
                    let to = d.address(router.delimiter());
                    let line = match router.transport(&to) {
                        Ok(Transport::Local { user, mailbox, .. }) => {
                            let mailbox = match mailbox {
                                Mailbox::Maildir => {
                                    format!("maildir {}", router.maildir(&user).display())
                                }
                                Mailbox::Mbox => format!("mbox {}", router.mbox(&user).display()),
                                Mailbox::Pipe => format!(
                                    "pipe {}",
                                    router.mailbox().pipe.command.first().map_or("", |c| c)
                                ),
                            };
                            format!("{written} -> {to} (local, {mailbox})")
                        }
                        Ok(Transport::Smtp {
                            next_hop: Some(hop),
                            ..
                        }) => format!("{written} -> {to} (smtp, {hop})"),
                        Ok(Transport::Smtp { domain, .. }) => {
                            format!("{written} -> {to} (smtp, MX of {domain})")
                        }
                        Ok(Transport::Lmtp { next_hop }) => {
                            format!("{written} -> {to} (lmtp, {next_hop})")
                        }
                        Ok(Transport::Refuse { bounce, dsn, text }) => format!(
                            "{written} -> {to} ({}, {dsn} {text})",
                            if bounce { "error" } else { "retry" }
                        ),
                        Ok(Transport::Discard { text }) => {
                            format!("{written} -> {to} (discard, {text})")
                        }
                        Err(e) => return format!("{written} -> {to} (no transport: {e})"),
                    };
                    // Which entry chose it, if one did.
                    match to
                        .rsplit_once('@')
                        .and_then(|(l, d)| router.address_transport_entry(l, d))
                    {
                        Some((_, origin)) => format!("{line} via {origin}"),
                        None => line,
                    }
                })
                .collect();
            (lines, true)
        }
        Err(e @ RouteError::UnknownUser) => (vec![format!("{written}: 550 5.1.1 {e}")], false),
        Err(e @ RouteError::AliasLoop) => (vec![format!("{written}: 550 5.4.6 {e}")], false),
    }
}

/// Prints every address's routes; failure if any address is refused.
pub fn run(config: &Path, addresses: &[String]) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    let router = Router::load(&config).map_err(|e| anyhow::anyhow!("routing tables: {e}"))?;
    let mut ok = true;
    for a in addresses {
        let (lines, accepted) = describe(&router, a);
        ok &= accepted;
        for l in lines {
            println!("{l}");
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
