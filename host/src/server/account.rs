//! Root's part of a start, and what `postern check` verifies of it: the
//! account to serve as (`[server] user`), refusing to serve as root unless
//! the config says so, and the trees handed to the account (spool, Maildir
//! base, plugin cache) checked before root gives them away.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::config::Config;
use crate::durable::dirsync::create_dir_durable;
use crate::privileges::{self, Account};

/// `[server] user`, as root: the account, with the spool, the Maildir
/// base and the plugin cache given to it, and the files the daemon reads
/// again after the drop checked. `None` when Postern runs as whoever
/// started it (refused for root unless `server.run_as_root`).
pub fn prepare(cfg: &Config) -> anyhow::Result<Option<Account>> {
    let Some(name) = &cfg.server.user else {
        refuse_root(cfg, None)?;
        return Ok(None);
    };
    let account = privileges::lookup(name).context("server.user")?;
    refuse_root(cfg, Some(&account))?;
    if privileges::euid() != 0 {
        if privileges::euid() == account.uid {
            return Ok(None);
        }
        anyhow::bail!("server.user = {name:?}: changing user needs starting as root");
    }
    for warning in check(cfg, &account)? {
        tracing::warn!("{warning}");
    }
    let spool = &cfg.server.spool_dir;
    create_dir_durable(spool, 0o700, 0o755)
        .with_context(|| format!("cannot create {}", spool.display()))?;
    // Again, now that the path exists and resolves (through any links in
    // it): the chown below is recursive.
    refuse_tree(Tree::Spool, spool, &account)?;
    privileges::chown(spool, &account, true)?;
    // The Maildir template's fixed part ("var/mail/" of
    // "var/mail/{user}/Maildir"), where new mailboxes are made: created for
    // the account when missing; an existing one is the operator's to own.
    let template = &cfg.local.maildir;
    let fixed = template.split('{').next().unwrap_or_default();
    let base = if fixed.ends_with('/') {
        Some(Path::new(fixed))
    } else {
        Path::new(fixed).parent()
    };
    if let Some(base) = base.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        create_dir_durable(base, 0o755, 0o755)
            .with_context(|| format!("cannot create {}", base.display()))?;
        privileges::chown(base, &account, false)?;
    }
    // Plugins are compiled and their artifacts cached by the account; root
    // never loads one (an artifact is machine code). The cache is given
    // away recursively, so it gets the spool's guards.
    // A cache inside the spool (the default) is part of the tree just
    // given: the account makes it itself after the drop, and root touches
    // nothing below a directory the account owns.
    let cache = cfg.wasm.cache_dir_in(spool);
    if !cfg.plugins.is_empty() && !within(&cache, spool) && std::fs::create_dir_all(&cache).is_ok()
    {
        refuse_tree(Tree::PluginCache, &cache, &account)?;
        privileges::chown(&cache, &account, true)?;
    }
    Ok(Some(account))
}

/// Started as root, Postern serves as root only when the config says so
/// (`server.run_as_root`): without `server.user` (or with an account of
/// ID 0) every client's input, TLS, SASL, plugin compilation and delivery
/// into users' Maildirs would run as root. Postfix refuses a privileged
/// `mail_owner` outright. The start and `postern check` share it.
pub fn refuse_root(cfg: &Config, account: Option<&Account>) -> anyhow::Result<()> {
    if privileges::euid() != 0 || cfg.server.run_as_root {
        return Ok(());
    }
    let what = match account {
        None => "started as root without server.user".to_owned(),
        Some(a) if a.uid == 0 => format!("server.user = {:?} is root", a.name),
        Some(_) => return Ok(()),
    };
    anyhow::bail!(
        "{what}: refusing to serve as root (clients' input, TLS, SASL, plugins and delivery into users' Maildirs would all be handled by root). \
         Set [server] user to an account of Postern's own (useradd --system --shell /usr/sbin/nologin postern; user = \"postern\"), \
         or [server] run_as_root = true to run as root anyway"
    )
}

/// A directory tree root gives to the account recursively.
#[derive(Debug, Clone, Copy)]
enum Tree {
    Spool,
    PluginCache,
}

impl Tree {
    fn key(self) -> &'static str {
        match self {
            Tree::Spool => "server.spool_dir",
            Tree::PluginCache => "wasm.cache_dir",
        }
    }

    fn example(self) -> &'static str {
        match self {
            Tree::Spool => "/var/spool/postern",
            Tree::PluginCache => "/var/cache/postern",
        }
    }
}

/// A tree given to the account recursively must say plainly which tree
/// that is: never a system directory (`/var`, `/var/cache`, ...), never
/// the working directory or one above it, and never reached through a
/// directory the account can change (it could swap a component for a
/// link and point root's chown walk at `/etc`). Checked on the resolved
/// path.
fn refuse_tree(tree: Tree, path: &Path, account: &Account) -> anyhow::Result<()> {
    let (key, name) = (tree.key(), &account.name);
    let refuse = |why: String| {
        anyhow::anyhow!(
            "{key} = {}: refusing to give that tree to server.user {name}: {why}; use a directory of Postern's own ({})",
            path.display(),
            tree.example()
        )
    };
    if privileges::system_dir(path) {
        return Err(refuse("it is a system directory".into()));
    }
    let real = resolve(path);
    if let Ok(cwd) = std::env::current_dir()
        && cwd.starts_with(&real)
    {
        return Err(refuse("it holds the working directory".into()));
    }
    for dir in real.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        if meta.uid() == account.uid || changeable_by(account, &meta) {
            return Err(refuse(format!(
                "{} can be changed by {name}, who could point the tree elsewhere",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// True if `path` is `tree` or below it, both resolved: part of a tree
/// already checked and given to the account as a whole.
fn within(path: &Path, tree: &Path) -> bool {
    resolve(path).starts_with(resolve(tree))
}

/// True if the account may add, remove or rename entries of a directory
/// it does not own: by group or other write bits, unless the sticky bit
/// keeps it to its own entries (as in /tmp).
fn changeable_by(account: &Account, meta: &std::fs::Metadata) -> bool {
    let mode = meta.mode();
    if mode & 0o1000 != 0 {
        return false;
    }
    if account.groups.contains(&meta.gid()) {
        mode & 0o020 != 0
    } else {
        mode & 0o002 != 0
    }
}

/// The absolute path with every link resolved, as far as it exists (the
/// rest is made by root under the resolved part).
fn resolve(path: &Path) -> PathBuf {
    let absolute = std::env::current_dir()
        .map(|cwd| cwd.join(path))
        .unwrap_or_else(|_| path.to_path_buf());
    let mut rest = Vec::new();
    let mut head = absolute.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(head) {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (head.parent(), head.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                head = parent;
            }
            _ => return absolute,
        }
    }
}

/// What root can tell before the drop about running as `account`, without
/// changing anything (the start and `postern check` share it): errors for
/// what would break, warnings (returned) for what would break later.
pub fn check(cfg: &Config, account: &Account) -> anyhow::Result<Vec<String>> {
    let name = &account.name;
    refuse_tree(Tree::Spool, &cfg.server.spool_dir, account)?;
    let cache = cfg.wasm.cache_dir_in(&cfg.server.spool_dir);
    if !cfg.plugins.is_empty() && !within(&cache, &cfg.server.spool_dir) {
        refuse_tree(Tree::PluginCache, &cache, account)?;
    }
    for (i, a) in cfg.auth.iter().enumerate() {
        if let Some(path) = &a.path
            && !privileges::can_read(account, path)
        {
            anyhow::bail!(
                "auth[{i}] {:?}: {} is not readable by server.user {name}, who reads it at every AUTH: give it to the account's group (chgrp; chmod 640)",
                a.name,
                path.display()
            );
        }
    }
    let mut warnings = Vec::new();
    let sni = cfg.tls.sni.iter().flat_map(|s| [&s.certificate, &s.key]);
    for path in [&cfg.tls.certificate, &cfg.tls.key]
        .into_iter()
        .flatten()
        .chain(sni)
    {
        if !privileges::can_read(account, path) {
            warnings.push(format!(
                "tls: {} is read as root at start, but server.user {name} cannot read it: reloads and certificate renewals will fail until it can (a group such as ssl-cert the account is in, mode 640)",
                path.display()
            ));
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn account(uid: u32, gid: u32) -> Account {
        Account {
            name: "mail".into(),
            uid,
            gid,
            groups: vec![gid],
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("postern-account-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn system_directories_are_never_given_away() {
        let a = account(4242, 4242);
        for p in [
            "/var/cache",
            "/var",
            "/",
            "/var/cache/",
            "/tmp/../var/cache",
        ] {
            let err = refuse_tree(Tree::PluginCache, Path::new(p), &a)
                .expect_err(p)
                .to_string();
            assert!(
                err.starts_with(&format!("wasm.cache_dir = {p}: refusing to give that tree")),
                "{err}"
            );
        }
        let err = refuse_tree(Tree::Spool, Path::new("/var/spool"), &a)
            .expect_err("spool")
            .to_string();
        assert!(err.contains("server.spool_dir"), "{err}");
    }

    #[test]
    fn a_cache_in_the_spool_is_part_of_the_spools_tree() {
        let dir = temp("within");
        let spool = dir.join("spool");
        std::fs::create_dir(&spool).expect("spool");
        assert!(within(&spool.join("plugin-cache"), &spool));
        assert!(within(&spool, &spool));
        assert!(!within(&dir.join("cache"), &spool));
        assert!(!within(&spool.join("../cache"), &spool));
        // A link in the spool leading out is not inside it.
        std::os::unix::fs::symlink("/srv", spool.join("out")).expect("link");
        assert!(!within(&spool.join("out/cache"), &spool));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_working_directory_is_never_given_away() {
        let a = account(4242, 4242);
        for p in [".", "", "./"] {
            let err = refuse_tree(Tree::PluginCache, Path::new(p), &a)
                .expect_err(p)
                .to_string();
            assert!(err.contains("holds the working directory"), "{err}");
        }
    }

    #[test]
    fn a_tree_reached_through_the_accounts_directory_is_refused() {
        let dir = temp("through");
        let own = dir.join("own");
        std::fs::create_dir(&own).expect("own");
        // Owned by the account's uid: it could replace "cache" with a link.
        let uid = std::fs::metadata(&own).expect("meta").uid();
        let a = account(uid, 4242);
        let err = refuse_tree(Tree::PluginCache, &own.join("cache/plugins"), &a)
            .expect_err("owned ancestor")
            .to_string();
        assert!(err.contains("can be changed by mail"), "{err}");
        // Someone else's directory, writable by the account's group.
        let b = account(uid + 1, 4242);
        assert!(refuse_tree(Tree::PluginCache, &own.join("cache"), &b).is_ok());
        std::os::unix::fs::chown(&own, None, Some(4242)).expect("chgrp");
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o775)).expect("chmod");
        assert!(refuse_tree(Tree::PluginCache, &own.join("cache"), &b).is_err());
        // Sticky (like /tmp): only its own entries.
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        assert!(refuse_tree(Tree::PluginCache, &own.join("cache"), &b).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn paths_resolve_through_links_and_missing_parts() {
        let dir = temp("resolve");
        std::os::unix::fs::symlink("/var", dir.join("link")).expect("link");
        assert_eq!(resolve(&dir.join("link/cache")), Path::new("/var/cache"));
        assert_eq!(
            resolve(&dir.join("link/no/such")),
            Path::new("/var/no/such")
        );
        assert!(privileges::system_dir(&dir.join("link/cache")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
