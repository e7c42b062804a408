//! Which delivery agent takes an address: decided once per delivery
//! attempt, from the address a queue file keeps (Postfix's
//! trivial-rewrite, asked by the queue manager), so that what is queued
//! never names a transport.

use super::{Router, split_tag};
use crate::config::{Mailbox, NextHop, SmtpHop, TransportSpec};
use crate::smtp::address::local_value;

/// The delivery agent for one address, with what it needs to know.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// A local user's mailbox.
    Local {
        /// The user, as configured.
        user: String,
        /// The `+tag` of the address, if any (a Maildir folder).
        tag: Option<String>,
        /// Its mailbox kind: `[local] mailbox`, or a transport entry's.
        mailbox: Mailbox,
    },
    /// Another domain: by SMTP to its mail exchangers, or to a next hop.
    Smtp {
        /// The domain, in lower case.
        domain: String,
        /// From `[transport]` or `smtp_client.relayhost`: where to send
        /// instead of the domain's MX hosts.
        next_hop: Option<SmtpHop>,
    },
    /// `[transport]`: by LMTP to one server.
    Lmtp {
        /// The server.
        next_hop: NextHop,
    },
    /// A transport entry's `error:` (bounced) or `retry:` (deferred).
    Refuse {
        /// Bounced rather than deferred.
        bounce: bool,
        /// The enhanced status code.
        dsn: String,
        /// What the sender is told.
        text: String,
    },
    /// A transport entry's `discard:`: done without a copy.
    Discard {
        /// What the log says.
        text: String,
    },
}

impl Transport {
    /// The agent's name in logs (`relay=` for local delivery).
    pub fn agent(&self) -> &'static str {
        match self {
            Transport::Local { .. } => "local",
            Transport::Smtp { .. } => "smtp",
            Transport::Lmtp { .. } => "lmtp",
            Transport::Refuse { bounce: true, .. } => "error",
            Transport::Refuse { bounce: false, .. } => "retry",
            Transport::Discard { .. } => "discard",
        }
    }
}

/// Why an address has no transport now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// A local domain's address whose user is not (or no longer) there.
    #[error("user {0} no longer exists")]
    NoSuchUser(String),
    /// Not an address (no domain).
    #[error("not a routable address: {0}")]
    NotAnAddress(String),
}

impl Router {
    /// The transport of an address that routing gave at RCPT time (after
    /// alias expansion: aliases are not expanded again here).
    pub fn transport(&self, address: &str) -> Result<Transport, TransportError> {
        let (local, domain) = address
            .rsplit_once('@')
            .filter(|(l, d)| !l.is_empty() && !d.is_empty())
            .ok_or_else(|| TransportError::NotAnAddress(address.to_string()))?;
        let mut mailbox = self.mailbox().kind;
        match self.address_transport_entry(local, domain).map(|(s, _)| s) {
            Some(TransportSpec::Lmtp(next_hop)) => return Ok(Transport::Lmtp { next_hop }),
            Some(TransportSpec::Smtp(hop)) => {
                return Ok(Transport::Smtp {
                    domain: domain.to_ascii_lowercase(),
                    next_hop: hop.or_else(|| self.relayhost.clone()),
                });
            }
            Some(TransportSpec::Refuse { bounce, dsn, text }) => {
                return Ok(Transport::Refuse { bounce, dsn, text });
            }
            Some(TransportSpec::Discard(text)) => return Ok(Transport::Discard { text }),
            Some(TransportSpec::Mailbox(kind)) => mailbox = kind,
            Some(TransportSpec::Local) | None => {}
        }
        if !self.is_local_domain(domain) {
            return Ok(Transport::Smtp {
                domain: domain.to_ascii_lowercase(),
                next_hop: self.relayhost.clone(),
            });
        }
        let value = local_value(local);
        let local = value.as_ref();
        if let Some(user) = self.users.get(&local.to_lowercase()) {
            return Ok(Transport::Local {
                user: user.clone(),
                tag: None,
                mailbox,
            });
        }
        if let Some((base, tag)) = self.delimiter.and_then(|d| split_tag(local, d))
            && let Some(user) = self.users.get(&base.to_lowercase())
        {
            return Ok(Transport::Local {
                user: user.clone(),
                tag: (!tag.is_empty()).then(|| tag.to_string()),
                mailbox,
            });
        }
        Err(TransportError::NoSuchUser(local.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn router() -> Router {
        let text = r#"
[server]
hostname = "mx.example.test"
[[listener]]
address = "127.0.0.1:2525"
[local]
domains = ["example.test"]
users = ["alice", "Bob"]
[aliases]
postmaster = "alice"
abuse = "alice"
[transport]
"lmtp.test" = "lmtp:[127.0.0.1]:24"
".sub.test" = "lmtp:unix:/run/lmtp"
"relay.test" = "smtp:[10.0.0.1]"
"Carol@example.test" = "lmtp:unix:/run/carol"
"#;
        Router::new(&Config::from_toml(text, std::path::Path::new("t.toml")).unwrap())
    }

    #[test]
    fn local_users_with_their_tags_and_remote_domains() {
        let r = router();
        assert_eq!(
            r.transport("alice+News@Example.Test"),
            Ok(Transport::Local {
                user: "alice".into(),
                tag: Some("News".into()),
                mailbox: Mailbox::Maildir
            })
        );
        assert_eq!(
            r.transport("bob@example.test"),
            Ok(Transport::Local {
                user: "Bob".into(),
                tag: None,
                mailbox: Mailbox::Maildir
            })
        );
        assert_eq!(
            r.transport("far@Dest.Test"),
            Ok(Transport::Smtp {
                domain: "dest.test".into(),
                next_hop: None
            })
        );
        assert_eq!(
            r.transport("gone@example.test"),
            Err(TransportError::NoSuchUser("gone".into()))
        );
        assert!(r.transport("nodomain").is_err());
        let tcp = NextHop::Tcp {
            host: "127.0.0.1".into(),
            port: 24,
        };
        assert_eq!(
            r.transport("x@LMTP.test"),
            Ok(Transport::Lmtp { next_hop: tcp })
        );
        // `.sub.test` is its subdomains, not itself.
        assert_eq!(
            r.transport("x@a.b.sub.test"),
            Ok(Transport::Lmtp {
                next_hop: NextHop::Unix("/run/lmtp".into())
            })
        );
        assert_eq!(
            r.transport("x@sub.test"),
            Ok(Transport::Smtp {
                domain: "sub.test".into(),
                next_hop: None
            })
        );
        // An address's own entry comes before its domain's, with or
        // without its +tag; other addresses of the domain stay local.
        for carol in ["carol@example.test", "CAROL+x@example.test"] {
            assert_eq!(
                r.transport(carol),
                Ok(Transport::Lmtp {
                    next_hop: NextHop::Unix("/run/carol".into())
                }),
                "{carol}"
            );
        }
        assert!(matches!(
            r.transport("alice@example.test"),
            Ok(Transport::Local { .. })
        ));
        // `smtp:[10.0.0.1]` names its next hop.
        assert_eq!(
            r.transport("x@relay.test"),
            Ok(Transport::Smtp {
                domain: "relay.test".into(),
                next_hop: Some(SmtpHop {
                    host: "10.0.0.1".into(),
                    port: None,
                    mx: false
                })
            })
        );
        assert!(r.accepts_domain("lmtp.test") && r.accepts_domain("x.sub.test"));
        assert!(r.accepts_domain("relay.test") && r.accepts_domain("example.test"));
        assert!(!r.accepts_domain("sub.test") && !r.accepts_domain("dest.test"));
        assert!(!r.is_local_domain("lmtp.test"));
        // Accepted, but not expanded as local users: any user there is
        // the LMTP server's to judge.
        let to = crate::smtp::address::parse_forward_path("alice@lmtp.test", true).unwrap();
        assert_eq!(
            r.resolve(&to),
            Ok(vec![crate::route::Destination::Remote {
                address: "alice@lmtp.test".into()
            }])
        );
        // An alias is not expanded again at delivery.
        assert!(r.transport("postmaster@example.test").is_err());
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn file_entries_after_toml_for_a_key_and_star_last() {
        let dir = std::env::temp_dir().join(format!("postern-tt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("transport");
        std::fs::write(
            &file,
            "bob@example.test mbox\nbob+x@example.test discard\nexample.test mbox\n\
             gone.test error:5.1.2 moved\n* retry:4.7.1 closed\n",
        )
        .unwrap();
        let text = crate::config::tests::MINIMAL.replace(
            "users = [\"alice\"]",
            &format!(
                "users = [\"alice\", \"bob\"]\ntransport_maps = [\"{}\"]",
                file.display()
            ),
        ) + "[transport]\n\"bob@example.test\" = \"maildir\"\n";
        let r = Router::load(&Config::from_toml(&text, std::path::Path::new("t.toml")).unwrap())
            .unwrap();
        let local = |user: &str, tag: Option<&str>, mailbox| Transport::Local {
            user: user.into(),
            tag: tag.map(String::from),
            mailbox,
        };
        // The same key: [transport] first.
        assert_eq!(
            r.transport("bob@example.test"),
            Ok(local("bob", None, Mailbox::Maildir))
        );
        // A more specific key of a file wins over the TOML's.
        assert_eq!(
            r.transport("bob+x@example.test"),
            Ok(Transport::Discard {
                text: "discarded".into()
            })
        );
        assert_eq!(
            r.transport("alice+y@example.test"),
            Ok(local("alice", Some("y"), Mailbox::Mbox))
        );
        assert_eq!(
            r.transport("a@gone.test"),
            Ok(Transport::Refuse {
                bounce: true,
                dsn: "5.1.2".into(),
                text: "moved".into()
            })
        );
        assert_eq!(
            r.transport("a@far.test"),
            Ok(Transport::Refuse {
                bounce: false,
                dsn: "4.7.1".into(),
                text: "closed".into()
            })
        );
        // Neither `*` nor a refusal opens a domain to the world.
        assert!(!r.accepts_domain("far.test") && !r.accepts_domain("gone.test"));
        let (_, origin) = r.address_transport_entry("a", "gone.test").unwrap();
        assert_eq!(origin.to_string(), format!("{}:4", file.display()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
