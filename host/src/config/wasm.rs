//! `[wasm]`: the plugin runtime's settings.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Bytes, Seconds};

/// `[wasm]`: the plugin runtime. Changes need a restart.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Wasm {
    /// Precompiled plugin artifacts, keyed by content and engine hash.
    /// Default: `plugin-cache` in `server.spool_dir`. Only files sealed
    /// with `cache_key` (and that no one but this user or root could
    /// have written) are loaded; an artifact no generation has used for 7
    /// days is removed.
    pub cache_dir: Option<PathBuf>,
    /// The key that seals the artifacts (mode 0600, made by the daemon at
    /// its first start). Default: `plugin-cache.key` in `server.spool_dir`.
    pub cache_key: Option<PathBuf>,
    /// Plugin instances alive at once over all sessions (pooling slots).
    pub max_instances: u32,
    /// Ceiling for any plugin's `memory_limit` (size of a pooling slot).
    pub max_memory: Bytes,
    /// Memory of a finished instance that stays mapped and is reset in
    /// place for the next one instead of being returned to the kernel. With
    /// Linux's PAGEMAP_SCAN (6.7+) only pages the plugin wrote are reset,
    /// and the default is 2 MiB; without it every byte up to this size is
    /// cleared on each reuse, and the default is 0.
    pub keep_resident: Option<Bytes>,
    /// CPU time all plugin calls of one transaction (connect to the end
    /// of its message) may use together; past it no plugin runs and the
    /// client gets 451 4.3.0. Applies at reload, unlike the rest of
    /// `[wasm]`.
    pub transaction_cpu: Seconds,
}

impl Default for Wasm {
    fn default() -> Wasm {
        Wasm {
            cache_dir: None,
            cache_key: None,
            max_instances: 1000,
            max_memory: Bytes(128 << 20),
            keep_resident: None,
            transaction_cpu: Seconds(std::time::Duration::from_secs(10)),
        }
    }
}

impl Wasm {
    /// The cache directory, for a daemon whose spool is `spool`.
    pub fn cache_dir_in(&self, spool: &Path) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| spool.join("plugin-cache"))
    }

    /// The cache key file, for a daemon whose spool is `spool`.
    pub fn cache_key_in(&self, spool: &Path) -> PathBuf {
        self.cache_key
            .clone()
            .unwrap_or_else(|| spool.join("plugin-cache.key"))
    }

    /// True if `other` differs in what only a restart applies (all but
    /// `transaction_cpu`).
    pub fn needs_restart_for(&self, other: &Wasm) -> bool {
        let same_budget = Wasm {
            transaction_cpu: self.transaction_cpu,
            ..other.clone()
        };
        *self != same_budget
    }

    /// Reports what is wrong with the values, each with its key.
    pub(super) fn validate(&self, bad: &mut impl FnMut(&str, String)) {
        if self.max_instances < 1 {
            bad("wasm.max_instances", "must be at least 1".into());
        }
        if self.max_memory.0 < 1 << 20 {
            bad("wasm.max_memory", "must be at least 1M".into());
        }
        if self.transaction_cpu.0 < std::time::Duration::from_millis(10) {
            bad("wasm.transaction_cpu", "must be at least 10ms".into());
        }
        for (key, path) in [
            ("wasm.cache_dir", &self.cache_dir),
            ("wasm.cache_key", &self.cache_key),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                bad(key, "must not be empty".into());
            }
        }
        if let (Some(dir), Some(key)) = (&self.cache_dir, &self.cache_key)
            && key.starts_with(dir)
        {
            bad(
                "wasm.cache_key",
                "must not be inside wasm.cache_dir (whoever can plant artifacts there must not be able to plant the key that seals them)".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(wasm: &Wasm) -> Vec<(String, String)> {
        let mut out = Vec::new();
        wasm.validate(&mut |k: &str, m: String| out.push((k.to_string(), m)));
        out
    }

    #[test]
    fn cache_defaults_live_in_the_spool_and_bad_values_name_their_key() {
        let w = Wasm::default();
        let spool = Path::new("/var/spool/postern");
        assert_eq!(w.cache_dir_in(spool), spool.join("plugin-cache"));
        assert_eq!(w.cache_key_in(spool), spool.join("plugin-cache.key"));
        assert!(problems(&w).is_empty());
        let bad = Wasm {
            max_instances: 0,
            cache_dir: Some("/var/cache/postern".into()),
            cache_key: Some("/var/cache/postern/key".into()),
            ..Wasm::default()
        };
        let keys: Vec<String> = problems(&bad).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["wasm.max_instances", "wasm.cache_key"]);
    }
}
