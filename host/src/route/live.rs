//! The routing tables of a generation as files on disk: read at start and
//! reload, and read again when a file changes ([`watch`]). A table that
//! no longer parses leaves the tables read before in use.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::durable::stamp::Stamp;

use super::table::{
    AliasTable, Entry, TableError, VirtualTable, fold, parse_aliases, parse_virtual,
};
use super::transport_table::{TransportEntry, TransportTable, parse_transport_table};
use crate::config::{Mailbox, TransportSpec, check_entry};

/// How often [`watch`] looks at the files.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// The format of a table file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// virtual(5).
    Virtual,
    /// aliases(5).
    Aliases,
    /// transport(5).
    Transport,
}

/// The parsed tables, in configuration order (the first table with a key
/// answers for it).
#[derive(Debug, Default)]
pub struct Tables {
    /// `virtual_alias_maps`.
    pub virtuals: Vec<VirtualTable>,
    /// `alias_maps`.
    pub aliases: Vec<AliasTable>,
    /// `transport_maps`.
    pub transports: Vec<TransportTable>,
}

impl Tables {
    /// The results of a virtual(5) key (already case-folded).
    pub fn virtual_entry(&self, key: &str) -> Option<&Entry> {
        self.virtuals.iter().find_map(|t| t.entries.get(key))
    }

    /// True if a table declares `domain` (lower case) a virtual alias domain.
    pub fn declares(&self, domain: &str) -> bool {
        self.virtuals.iter().any(|t| t.domains.contains_key(domain))
    }

    /// The values of an aliases(5) name.
    pub fn alias(&self, name: &str) -> Option<&Entry> {
        let name = fold(name);
        self.aliases.iter().find_map(|t| t.entries.get(&name))
    }

    /// The transport of a transport(5) key (already case-folded): the
    /// first file's that has it, with that file.
    pub fn transport(&self, key: &str) -> Option<(&TransportEntry, &Path)> {
        self.transports
            .iter()
            .find_map(|t| t.entries.get(key).map(|e| (e, t.path.as_path())))
    }

    /// Keys over all tables.
    pub fn len(&self) -> usize {
        let v: usize = self.virtuals.iter().map(|t| t.entries.len()).sum();
        let t: usize = self.transports.iter().map(|t| t.entries.len()).sum();
        v + t + self.aliases.iter().map(|t| t.entries.len()).sum::<usize>()
    }

    /// True without any key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the tables must agree with: the rest of the configuration.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// `local.domains` (lower case).
    pub local_domains: HashSet<String>,
    /// `local.users` (case-folded).
    pub users: HashSet<String>,
    /// `[aliases]` names (case-folded, local names only).
    pub toml_aliases: HashSet<String>,
    /// `[aliases]` as written: name → targets (their bare targets may be
    /// names of the alias_maps files, checked once these are read).
    pub toml_targets: Vec<(String, Vec<String>)>,
    /// Mailbox kinds whose settings cannot be used, with why: a
    /// transport table may not name them.
    pub unusable: Vec<(Mailbox, String)>,
}

impl Context {
    /// Checks the tables against the configuration.
    fn check(&self, tables: &Tables) -> Result<(), TableError> {
        for t in &tables.virtuals {
            for (domain, &line) in &t.domains {
                if self.local_domains.contains(domain) {
                    return Err(TableError::Line {
                        path: t.path.clone(),
                        line,
                        message: format!(
                            "{domain:?} is in local.domains: a domain is either local or a virtual alias domain"
                        ),
                    });
                }
            }
        }
        let mut locals: Vec<String> = self.local_domains.iter().cloned().collect();
        locals.sort();
        for t in &tables.transports {
            let mut keys: Vec<(&String, &TransportEntry)> = t.entries.iter().collect();
            keys.sort_by_key(|(_, e)| e.line);
            for (key, e) in keys {
                let line_err = |message: String| TableError::Line {
                    path: t.path.clone(),
                    line: e.line,
                    message,
                };
                check_entry(key, &e.spec, &locals).map_err(line_err)?;
                if let TransportSpec::Mailbox(kind) = &e.spec
                    && let Some((_, why)) = self.unusable.iter().find(|(k, _)| k == kind)
                {
                    return Err(line_err(format!(
                        "cannot deliver by {}: {why}",
                        kind.as_str()
                    )));
                }
            }
        }
        let known = |name: &str| {
            let name = fold(name);
            self.users.contains(&name)
                || self.toml_aliases.contains(&name)
                || tables.alias(&name).is_some()
        };
        for t in &tables.aliases {
            let mut names: Vec<(&String, &Entry)> = t.entries.iter().collect();
            names.sort_by_key(|(_, e)| e.line);
            for (name, e) in names {
                for v in &e.targets {
                    if !v.contains('@') && !known(v) {
                        return Err(TableError::Line {
                            path: t.path.clone(),
                            line: e.line,
                            message: format!(
                                "{name}: {v:?} is neither a local user, an alias nor an address"
                            ),
                        });
                    }
                }
            }
        }
        if !tables.aliases.is_empty() {
            for (name, targets) in &self.toml_targets {
                if let Some(t) = targets.iter().find(|t| !t.contains('@') && !known(t)) {
                    return Err(TableError::Config(format!(
                        "aliases.{name}: target {t:?} is neither a local user, an alias nor an address"
                    )));
                }
            }
        }
        if !self.local_domains.is_empty() && !tables.aliases.is_empty() {
            for required in ["postmaster", "abuse"] {
                if !known(required) {
                    return Err(TableError::Config(format!(
                        "RFC 5321/2142 require an address `{required}`: add it to [aliases], to local.users or to an alias_maps file"
                    )));
                }
            }
        }
        Ok(())
    }
}

type Stamps = Vec<Option<Stamp>>;

#[derive(Debug, Default)]
struct Seen {
    /// The files' versions the current tables were read from.
    loaded: Stamps,
    /// Versions that failed to parse (logged once, not read again).
    failed: Option<Stamps>,
}

/// The tables of one generation, and where they come from.
#[derive(Debug)]
pub struct Live {
    sources: Vec<(PathBuf, Kind)>,
    context: Context,
    current: ArcSwap<Tables>,
    seen: Mutex<Seen>,
}

fn read(path: &Path) -> Result<(Vec<u8>, Stamp), TableError> {
    use std::io::Read;
    let fail = |e: std::io::Error| TableError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut file = std::fs::File::open(path).map_err(fail)?;
    let stamp = Stamp::of(&file.metadata().map_err(fail)?);
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(fail)?;
    Ok((bytes, stamp))
}

impl Live {
    /// No files: empty tables.
    pub fn empty() -> Live {
        Live {
            sources: Vec::new(),
            context: Context::default(),
            current: ArcSwap::from_pointee(Tables::default()),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Reads and checks every file.
    pub fn load(sources: Vec<(PathBuf, Kind)>, context: Context) -> Result<Live, TableError> {
        let (tables, stamps) = read_all(&sources, &context)?;
        Ok(Live {
            sources,
            context,
            current: ArcSwap::from_pointee(tables),
            seen: Mutex::new(Seen {
                loaded: stamps,
                failed: None,
            }),
        })
    }

    /// The tables now.
    pub fn tables(&self) -> arc_swap::Guard<Arc<Tables>> {
        self.current.load()
    }

    /// Reads the files again if any changed since they were read. On an
    /// error the tables stay as they were and it is logged once per
    /// version of the files.
    pub fn refresh(&self) {
        let now: Stamps = self
            .sources
            .iter()
            .map(|(p, _)| std::fs::metadata(p).ok().map(|m| Stamp::of(&m)))
            .collect();
        {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.loaded == now || seen.failed.as_ref() == Some(&now) {
                return;
            }
        }
        match read_all(&self.sources, &self.context) {
            Ok((tables, stamps)) => {
                let keys = tables.len();
                self.current.store(Arc::new(tables));
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                seen.loaded = stamps;
                seen.failed = None;
                tracing::info!(
                    "routing tables: read again after a change ({keys} keys in {} files)",
                    self.sources.len()
                );
            }
            Err(e) => {
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                seen.failed = Some(now);
                tracing::error!("routing tables: {e}; the tables read before stay in use");
            }
        }
    }
}

fn read_all(
    sources: &[(PathBuf, Kind)],
    context: &Context,
) -> Result<(Tables, Stamps), TableError> {
    let mut tables = Tables::default();
    let mut stamps = Vec::new();
    for (path, kind) in sources {
        let (bytes, stamp) = read(path)?;
        stamps.push(Some(stamp));
        match kind {
            Kind::Virtual => tables.virtuals.push(parse_virtual(path, &bytes)?),
            Kind::Aliases => tables.aliases.push(parse_aliases(path, &bytes)?),
            Kind::Transport => tables.transports.push(parse_transport_table(path, &bytes)?),
        }
    }
    context.check(&tables)?;
    Ok((tables, stamps))
}

/// Looks at the files every [`WATCH_INTERVAL`] and reads them again when
/// one changed, until the tables are no longer used by any generation.
/// A background check rather than one on lookup: sessions and delivery
/// never stat, read or parse a file, however large; and a broken edit is
/// logged within seconds, not at the next mail. Needs a Tokio runtime.
pub fn watch(live: &Arc<Live>) {
    if live.sources.is_empty() {
        return;
    }
    let weak: Weak<Live> = Arc::downgrade(live);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let Some(live) = weak.upgrade() else {
                return;
            };
            let _ = tokio::task::spawn_blocking(move || live.refresh()).await;
        }
    });
}
