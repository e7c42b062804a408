//! `[kv]`: the store behind the plugins' `kv` capability.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Seconds;

/// Which store holds the plugins' keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvBackend {
    /// A file of this node (redb), kept across restarts (default).
    #[default]
    Embedded,
    /// A Redis server, shared by several nodes.
    Redis,
}

/// `[kv]`: where the `kv` capability keeps its keys. Changes need a
/// restart.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Kv {
    /// `embedded` (default) or `redis`.
    pub backend: KvBackend,
    /// The embedded store's file. Default: `kv.redb` in `server.spool_dir`.
    pub path: Option<PathBuf>,
    /// The Redis server (`backend = "redis"`), e.g.
    /// `redis://127.0.0.1:6379/0`.
    pub url: Option<String>,
    /// How long one operation may take (connecting included) before it
    /// fails as `unavailable`.
    pub timeout: Seconds,
}

impl Default for Kv {
    fn default() -> Kv {
        Kv {
            backend: KvBackend::Embedded,
            path: None,
            url: None,
            timeout: Seconds(std::time::Duration::from_secs(2)),
        }
    }
}

impl Kv {
    /// The embedded store's file, for a daemon whose spool is `spool`.
    pub fn path_in(&self, spool: &Path) -> PathBuf {
        self.path.clone().unwrap_or_else(|| spool.join("kv.redb"))
    }

    /// Reports what is wrong with the values, each with its key.
    pub(super) fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        match (self.backend, &self.url) {
            (KvBackend::Redis, None) => {
                bad("kv.url", "is needed with backend = \"redis\"".into());
            }
            (KvBackend::Redis, Some(url))
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) =>
            {
                bad(
                    "kv.url",
                    "must be a redis:// (or rediss://) URL, e.g. \"redis://127.0.0.1:6379/0\""
                        .into(),
                );
            }
            (KvBackend::Embedded, Some(_)) => {
                bad("kv.url", "is only for backend = \"redis\"".into());
            }
            _ => {}
        }
        if self.path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            bad("kv.path", "must not be empty".into());
        }
        if self.timeout.0 < std::time::Duration::from_millis(10) {
            bad("kv.timeout", "must be at least 10ms".into());
        }
    }
}

/// A shared namespace's name (`kv_namespace`): 1 to 64 ASCII letters,
/// digits, `.`, `_` or `-`, so that it reads plainly in Redis keys.
pub fn check_namespace(ns: &str) -> Result<(), String> {
    if ns.is_empty() || ns.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !ns
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("may hold only ASCII letters, digits, `.`, `_` and `-`".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(kv: &Kv) -> Vec<String> {
        let mut out = Vec::new();
        kv.validate(&mut |k: &str, m: String| out.push(format!("{k}: {m}")));
        out
    }

    #[test]
    fn redis_needs_a_redis_url_and_embedded_none() {
        assert!(problems(&Kv::default()).is_empty());
        let redis = Kv {
            backend: KvBackend::Redis,
            ..Kv::default()
        };
        assert_eq!(
            problems(&redis),
            ["kv.url: is needed with backend = \"redis\""]
        );
        let http = Kv {
            url: Some("http://x".into()),
            ..redis.clone()
        };
        assert!(problems(&http)[0].starts_with("kv.url: must be a redis://"));
        let ok = Kv {
            url: Some("redis://127.0.0.1:6379/0".into()),
            ..redis
        };
        assert!(problems(&ok).is_empty());
        let stray = Kv {
            url: Some("redis://127.0.0.1".into()),
            ..Kv::default()
        };
        assert_eq!(
            problems(&stray),
            ["kv.url: is only for backend = \"redis\""]
        );
        assert_eq!(
            Kv::default().path_in(Path::new("/s")),
            PathBuf::from("/s/kv.redb")
        );
    }

    #[test]
    fn namespaces_are_plain_names() {
        assert!(check_namespace("greylist.v1-a_b").is_ok());
        for bad in ["", "a b", "a:b", "ü", &"x".repeat(65)] {
            assert!(check_namespace(bad).is_err(), "{bad:?}");
        }
    }
}
