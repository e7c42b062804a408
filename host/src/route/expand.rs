//! Recipient expansion, in Postfix's order: virtual alias maps first (for
//! every domain), then, for our own domains, aliases and users.
//!
//! Per address the virtual(5) keys are tried as Postfix does:
//! `user+tag@domain`, `user@domain`, then (only in our own domains)
//! `user+tag` and `user`, then `@domain`. A `+tag` the matching key did
//! not hold is carried to the results that have none (Postfix's
//! `propagate_unmatched_extensions`). Results are expanded again; a
//! result that is the address itself is final; a cycle, more than
//! [`MAX_ALIAS_DEPTH`] levels or more than [`MAX_EXPANSIONS`] addresses
//! is [`RouteError::AliasLoop`].

use std::collections::BTreeSet;

use super::live::Tables;
use super::table::fold;
use super::{Destination, RouteError, Router, split_tag};
use crate::smtp::address::{ForwardPath, Mailbox, local_value};

/// Levels of expansion below the recipient.
pub const MAX_ALIAS_DEPTH: usize = 10;

/// Addresses looked at while expanding one recipient (Postfix's
/// `virtual_alias_expansion_limit` is 1000 results).
pub const MAX_EXPANSIONS: usize = 1000;

/// One recipient's expansion under way.
struct Walk<'t> {
    tables: &'t Tables,
    out: BTreeSet<Destination>,
    /// The addresses being expanded, outermost first (a cycle's proof).
    path: Vec<String>,
    visits: usize,
}

/// Where an address enters: all of routing, or (a bare name in an alias)
/// the local aliases and users of its domain only.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Virtual,
    Local,
}

/// An address being expanded: its local part as written, its domain,
/// and a `+tag` inherited from the address it came from, if any.
struct Addr<'a> {
    local: &'a str,
    domain: &'a str,
    tag: Option<&'a str>,
}

impl Router {
    /// Expands a recipient into its destinations (virtual aliases,
    /// aliases, `+tag`). Remote domains yield one `Remote` destination;
    /// whether relaying is allowed is the caller's decision
    /// ([`Router::is_trusted`]).
    pub fn resolve(&self, to: &ForwardPath) -> Result<Vec<Destination>, RouteError> {
        let mailbox = match to {
            ForwardPath::Postmaster => Mailbox {
                local: "postmaster".into(),
                domain: self.origin.clone(),
            },
            ForwardPath::Mailbox(m) => m.clone(),
        };
        let tables = self.tables.tables();
        let mut walk = Walk {
            tables: &tables,
            out: BTreeSet::new(),
            path: Vec::new(),
            visits: 0,
        };
        let addr = Addr {
            local: &mailbox.local,
            domain: &mailbox.domain,
            tag: None,
        };
        self.expand(&mut walk, &addr, Stage::Virtual, 0)?;
        Ok(walk.out.into_iter().collect())
    }

    /// The address with its tag, lower case: what a cycle is made of.
    fn full_key(&self, a: &Addr) -> String {
        let value = local_value(a.local);
        match (a.tag, self.delimiter) {
            (Some(t), Some(d)) => format!("{}{d}{}@{}", fold(&value), fold(t), fold(a.domain)),
            _ => format!("{}@{}", fold(&value), fold(a.domain)),
        }
    }

    fn expand(&self, w: &mut Walk, a: &Addr, stage: Stage, depth: usize) -> Result<(), RouteError> {
        w.visits += 1;
        if depth > MAX_ALIAS_DEPTH || w.visits > MAX_EXPANSIONS {
            return Err(RouteError::AliasLoop);
        }
        let key = self.full_key(a);
        if w.path.contains(&key) {
            return Err(RouteError::AliasLoop);
        }
        w.path.push(key);
        let result = match stage {
            Stage::Virtual => self.virtual_stage(w, a, depth),
            Stage::Local => self.local_stage(w, a, depth),
        };
        w.path.pop();
        result
    }

    /// virtual(5) lookups, then what follows them.
    fn virtual_stage(&self, w: &mut Walk, a: &Addr, depth: usize) -> Result<(), RouteError> {
        let unquoted = local_value(a.local);
        let value: &str = &unquoted;
        let domain = fold(a.domain);
        // The local part with its tag, the part before it, and the tag.
        let (full, base, tag): (String, &str, Option<&str>) = match (a.tag, self.delimiter) {
            (Some(t), Some(d)) => (format!("{value}{d}{t}"), value, Some(t)),
            _ => match self.delimiter.and_then(|d| split_tag(value, d)) {
                Some((b, t)) => (value.to_string(), b, Some(t)),
                None => (value.to_string(), value, None),
            },
        };
        let ours = self.is_mydestination(&domain);
        let mut keys: Vec<(String, Option<&str>)> =
            vec![(format!("{}@{domain}", fold(&full)), None)];
        if tag.is_some() {
            keys.push((format!("{}@{domain}", fold(base)), tag));
        }
        if ours {
            keys.push((fold(&full), None));
            if tag.is_some() {
                keys.push((fold(base), tag));
            }
        }
        let found = keys
            .into_iter()
            .find_map(|(k, unmatched)| w.tables.virtual_entry(&k).map(|e| (e, unmatched)));
        let found = match found {
            Some(f) => Some(f),
            None if !ours && self.is_virtual_domain(&domain) => {
                // postmaster@ and abuse@ of every domain we serve reach
                // the local ones unless a table names them.
                let role = fold(base);
                if role == "postmaster" || role == "abuse" {
                    let origin = self.origin.clone();
                    let to = Addr {
                        local: &role,
                        domain: &origin,
                        tag,
                    };
                    return self.expand(w, &to, Stage::Local, depth + 1);
                }
                w.tables
                    .virtual_entry(&format!("@{domain}"))
                    .map(|e| (e, tag))
            }
            None => w
                .tables
                .virtual_entry(&format!("@{domain}"))
                .map(|e| (e, tag)),
        };
        let Some((entry, unmatched)) = found else {
            return self.after_virtual(w, a, depth);
        };
        let me = [
            format!("{}@{domain}", fold(&full)),
            format!("{}@{domain}", fold(base)),
        ];
        for t in &entry.targets {
            let (tl, td) = match t.rsplit_once('@') {
                Some((l, d)) => (l, d),
                // virtual(5): a result without a domain is in myorigin.
                None => (t.as_str(), self.origin.as_str()),
            };
            if me.contains(&format!("{}@{}", fold(&local_value(tl)), fold(td))) {
                // Mapped to itself: final, not a loop.
                self.after_virtual(w, a, depth)?;
                continue;
            }
            let has_tag = self
                .delimiter
                .is_some_and(|d| split_tag(&local_value(tl), d).is_some());
            let carried = unmatched.filter(|t| !t.is_empty() && !has_tag && !tl.starts_with('"'));
            let next = Addr {
                local: tl,
                domain: td,
                tag: carried,
            };
            self.expand(w, &next, Stage::Virtual, depth + 1)?;
        }
        Ok(())
    }

    /// An address no virtual(5) key rewrote: delivered here, unknown in a
    /// virtual alias domain, or relayed.
    fn after_virtual(&self, w: &mut Walk, a: &Addr, depth: usize) -> Result<(), RouteError> {
        if self.is_mydestination(a.domain) {
            return self.local_stage(w, a, depth);
        }
        if self.is_virtual_domain(a.domain) {
            return Err(RouteError::UnknownUser);
        }
        let address = match (a.tag, self.delimiter) {
            (Some(t), Some(d)) if !a.local.contains(d) => format!("{}{d}{t}@{}", a.local, a.domain),
            _ => format!("{}@{}", a.local, a.domain),
        };
        w.out.insert(Destination::Remote { address });
        Ok(())
    }

    /// aliases (`[aliases]`, then `alias_maps`) and users of a local domain.
    fn local_stage(&self, w: &mut Walk, a: &Addr, depth: usize) -> Result<(), RouteError> {
        let domain = a.domain.to_ascii_lowercase();
        // A quoted local part names the same mailbox as its value.
        let value = local_value(a.local);
        let local = value.as_ref();
        // Try the whole local part first, then without its +tag (Postfix order).
        let mut candidates = vec![(local.to_lowercase(), a.tag.map(str::to_string))];
        if let Some((base, tag)) = self.delimiter.and_then(|d| split_tag(local, d)) {
            // The tag as the sender wrote it; only the user is looked up.
            candidates.push((base.to_lowercase(), Some(tag.to_string())));
        }
        for (name, tag) in &candidates {
            let targets = self
                .aliases
                .get(&format!("{name}@{domain}"))
                .or_else(|| self.aliases.get(name))
                .or_else(|| w.tables.alias(name).map(|e| &e.targets));
            if let Some(targets) = targets {
                for t in targets {
                    let (tl, td, stage) = match t.rsplit_once('@') {
                        Some((l, d)) => (l, d, Stage::Virtual),
                        None => (t.as_str(), domain.as_str(), Stage::Local),
                    };
                    // An alias whose target is itself is a mailbox, not a loop.
                    if tl.eq_ignore_ascii_case(name)
                        && td.eq_ignore_ascii_case(&domain)
                        && let Some(user) = self.users.get(name)
                    {
                        w.out.insert(self.local_dest(user, tag.as_deref(), &domain));
                        continue;
                    }
                    let next = Addr {
                        local: tl,
                        domain: td,
                        tag: tag.as_deref(),
                    };
                    self.expand(w, &next, stage, depth + 1)?;
                }
                return Ok(());
            }
            if let Some(user) = self.users.get(name) {
                w.out.insert(self.local_dest(user, tag.as_deref(), &domain));
                return Ok(());
            }
        }
        Err(RouteError::UnknownUser)
    }

    fn local_dest(&self, user: &str, tag: Option<&str>, domain: &str) -> Destination {
        Destination::Local {
            user: user.to_string(),
            tag: tag.filter(|t| !t.is_empty()).map(str::to_string),
            domain: domain.to_string(),
        }
    }
}
