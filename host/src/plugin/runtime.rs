//! The WebAssembly runtime: one engine (pooling allocator, epoch
//! interruption), one linker, a compile cache on disk, and loading of
//! plugin components with their hook detection and validation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Instance, InstancePre, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    WasmBacktraceDetails,
};

use super::bindings::Full as PluginWorld;
use super::bindings::exports::postern::filter::{
    configure, connect_hook, data_hook, helo_hook, mail_hook, rcpt_hook,
};
use super::cache::{Cache, CacheSetting};
use super::host::Caps;
use super::limits::{MAX_HANDLES, MAX_HOST_RESOURCES};
use super::meter::{Limit, Meter, TICK};
use super::pool::{Needs, Pool};
use super::state::{EntryConf, HOSTCALL_FUEL, HostState};
use crate::config::{Grant, PluginDef, Wasm};

/// How long an artifact no generation uses stays in the cache (a rollback
/// within this time loads instead of compiling).
pub const CACHE_KEEP_UNUSED: Duration = Duration::from_secs(7 * 24 * 3600);

/// The hook interfaces a component exports.
#[derive(Clone, Default)]
pub struct Hooks {
    /// `connect-hook`.
    pub connect: Option<connect_hook::GuestIndices>,
    /// `helo-hook`.
    pub helo: Option<helo_hook::GuestIndices>,
    /// `mail-hook`.
    pub mail: Option<mail_hook::GuestIndices>,
    /// `rcpt-hook`.
    pub rcpt: Option<rcpt_hook::GuestIndices>,
    /// `data-hook`.
    pub data: Option<data_hook::GuestIndices>,
    /// `configure`.
    pub configure: Option<configure::GuestIndices>,
}

impl Hooks {
    /// Names of the exported hooks, for logs.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.connect.is_some() {
            v.push("connect");
        }
        if self.helo.is_some() {
            v.push("helo");
        }
        if self.mail.is_some() {
            v.push("mail");
        }
        if self.rcpt.is_some() {
            v.push("rcpt");
        }
        if self.data.is_some() {
            v.push("data");
        }
        v
    }

    /// True if the hook for this stage is exported.
    pub fn has(&self, stage: &str) -> bool {
        match stage {
            "connect" => self.connect.is_some(),
            "helo" => self.helo.is_some(),
            "mail" => self.mail.is_some(),
            "rcpt" => self.rcpt.is_some(),
            "data" => self.data.is_some(),
            _ => false,
        }
    }
}

/// A component ready to instantiate.
pub struct LoadedPlugin {
    /// Its `[[plugin]]` definition.
    pub def: PluginDef,
    /// Content hash of the `.wasm` (hex, first 12 digits), for logs.
    pub digest: String,
    /// Its compiled artifact in the cache directory.
    pub artifact: PathBuf,
    pub(super) pre: InstancePre<HostState>,
    /// Its compiled code, shared with every plugin of any generation
    /// built from the same `.wasm`: the runtime keeps only a weak
    /// reference, so the code goes when no generation uses it.
    _build: Arc<Component>,
    /// Exported hooks.
    pub hooks: Hooks,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.def.name)
            .field("digest", &self.digest)
            .field("hooks", &self.hooks.names())
            .finish()
    }
}

impl Drop for LoadedPlugin {
    fn drop(&mut self) {
        tracing::debug!("plugin {} ({}): unloaded", self.def.name, self.digest);
    }
}

/// A live instance and its store.
pub struct Live {
    pub(super) store: Store<HostState>,
    pub(super) instance: Instance,
    /// The CPU accounting of the store's entries (its epoch callback's).
    pub(super) meter: Arc<Meter>,
    /// Hook functions looked up and type-checked on first use: a warm
    /// instance pays for the lookup once, not on every call.
    pub(super) funcs: Funcs,
}

/// The typed hook functions of one instance, filled in as they are used.
#[derive(Default)]
pub struct Funcs {
    pub(super) connect: Option<connect_hook::Guest>,
    pub(super) helo: Option<helo_hook::Guest>,
    pub(super) mail: Option<mail_hook::Guest>,
    pub(super) rcpt: Option<rcpt_hook::Guest>,
    pub(super) data: Option<data_hook::Guest>,
}

/// The engine and everything shared by all generations.
pub struct Runtime {
    engine: Engine,
    linker: Linker<HostState>,
    /// The compile cache on disk, if this run has one.
    cache: Option<Cache>,
    /// Compiled components in use by some generation, by content hash: a
    /// reload of an unchanged plugin costs nothing, and a build no
    /// generation uses any more is freed (hot swaps must not pile up
    /// machine code).
    compiled: Mutex<HashMap<[u8; 32], Weak<Component>>>,
    /// Artifacts compiled (or read) while sizing the pool, until their
    /// plugin is loaded, by artifact name: nothing is compiled twice.
    staged: Mutex<HashMap<String, Vec<u8>>>,
    /// The pool's totals, fixed until restart.
    pool: Pool,
    /// The `[wasm]` settings the engine was made with (fixed until restart).
    settings: Wasm,
    /// The services behind the capabilities, once the daemon provides
    /// them ([`Runtime::provide`]).
    caps: OnceLock<Arc<Caps>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cache", &self.cache)
            .finish()
    }
}

impl Runtime {
    /// Creates the engine (and its epoch ticker thread) and the linker,
    /// with compiled plugins cached as `cache` says, and the pool sized
    /// for `plugins` (compiled now, for that, and kept for their load).
    pub async fn new(
        cfg: &Wasm,
        cache: &CacheSetting,
        plugins: &[PluginDef],
    ) -> anyhow::Result<Arc<Runtime>> {
        let (cfg, cache) = (cfg.clone(), cache.clone());
        let paths: Vec<PathBuf> = plugins.iter().map(|p| p.path.clone()).collect();
        tokio::task::spawn_blocking(move || Runtime::create(&cfg, &cache, &paths)).await?
    }

    fn create(
        cfg: &Wasm,
        cache: &CacheSetting,
        plugins: &[PathBuf],
    ) -> anyhow::Result<Arc<Runtime>> {
        let cache = Cache::open(cache);
        // The pool's totals are fixed with the engine, and what a
        // component needs is known once it is compiled: compile with an
        // engine of the same settings but no pool first. (Its artifacts
        // are the pooling engine's: the allocator is not part of the
        // compilation settings.)
        let probe = Engine::new(&engine_config(cfg, None))
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("cannot create the WebAssembly engine")?;
        let mut needs = Needs {
            memories: 0,
            tables: 0,
        };
        let mut staged = HashMap::new();
        for path in plugins {
            // Whatever fails here fails again, with its context, when the
            // plugin is loaded.
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            let digest = Sha256::digest(&bytes).into();
            if let Ok((c, artifact)) = build(&probe, cache.as_ref(), &digest, &bytes) {
                needs = needs.max(Needs::of(&c));
                staged.insert(artifact_name(&probe, &digest), artifact);
            }
        }
        drop(probe);
        let pool = Pool::new(cfg.max_instances, needs);
        // Probes /proc/self/pagemap: once.
        let pagemap = PoolingAllocationConfig::is_pagemap_scan_available();
        let resident = keep_resident(cfg, pagemap);
        tracing::info!(
            "wasm: pool of {pool}; PAGEMAP_SCAN {}, linear memory kept resident per instance slot: {} bytes",
            if pagemap {
                "available"
            } else {
                "not available"
            },
            resident
        );
        let engine = Engine::new(&engine_config(cfg, Some(pool.config(cfg, resident))))
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("cannot create the WebAssembly engine")?;
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .context("cannot start the epoch thread")?;
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        PluginWorld::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
        Ok(Arc::new(Runtime {
            engine,
            linker,
            cache,
            compiled: Mutex::new(HashMap::new()),
            staged: Mutex::new(staged),
            pool,
            settings: cfg.clone(),
            caps: OnceLock::new(),
        }))
    }

    /// Gives the instances made from now on the daemon's resolver and
    /// store (once; later calls are ignored: both are fixed until
    /// restart).
    pub fn provide(&self, caps: Caps) {
        let _ = self.caps.set(Arc::new(caps));
    }

    /// The pool's totals.
    pub fn pool(&self) -> Pool {
        self.pool
    }

    /// The `[wasm]` settings in force.
    pub fn settings(&self) -> &Wasm {
        &self.settings
    }

    /// Marks the artifacts in `keep` as used now, and removes those no
    /// generation has used for `unused_for` ([`Cache::evict`]; nothing
    /// without a cache). Blocking.
    pub fn evict_cache(&self, keep: &[&Path], unused_for: Duration) -> (usize, u64) {
        self.cache
            .as_ref()
            .map_or((0, 0), |c| c.evict(keep, unused_for))
    }

    /// Compiles a component, or loads it from the memory or disk cache.
    /// Returns it with its short digest (for logs) and its cache file.
    fn component(&self, bytes: &[u8]) -> anyhow::Result<(Arc<Component>, String, PathBuf)> {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let short = hex[..12].to_string();
        let name = artifact_name(&self.engine, &digest);
        let path = match &self.cache {
            Some(c) => c.path(&name),
            None => PathBuf::new(),
        };
        if let Some(c) = self
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest)
            .and_then(Weak::upgrade)
        {
            return Ok((c, short, path));
        }
        let staged = self
            .staged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
        let component = match staged {
            Some(artifact) => deserialize(&self.engine, &artifact)?,
            None => build(&self.engine, self.cache.as_ref(), &digest, bytes)?.0,
        };
        let component = Arc::new(component);
        let mut compiled = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        compiled.retain(|_, c| c.strong_count() > 0);
        compiled.insert(digest, Arc::downgrade(&component));
        Ok((component, short, path))
    }

    /// Loads and checks a plugin: WIT compatibility by name, imports
    /// satisfied, exported hooks type-checked by a trial instantiation.
    pub async fn load(self: &Arc<Self>, def: &PluginDef) -> anyhow::Result<Arc<LoadedPlugin>> {
        let bytes = std::fs::read(&def.path)
            .with_context(|| format!("cannot read {}", def.path.display()))?;
        let rt = self.clone();
        let (component, digest, artifact) =
            tokio::task::spawn_blocking(move || rt.component(&bytes)).await??;
        super::contract::check(&self.engine, &component, def)?;
        let needs = Needs::of(&component);
        tracing::debug!(
            "plugin {}: an instance needs {} memories and {} tables",
            def.name,
            needs.memories,
            needs.tables
        );
        let capacity = self.pool.capacity(needs);
        if capacity < self.pool.slots {
            tracing::warn!(
                "plugin {}: an instance needs {} memories and {} tables, more than the pool was made for at start ({}): at most {capacity} instances of it at once, not wasm.max_instances; a restart sizes the pool for it",
                def.name,
                needs.memories,
                needs.tables,
                self.pool
            );
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("its imports do not match what the host provides")?;
        let hooks = Hooks {
            connect: connect_hook::GuestIndices::new(&pre).ok(),
            helo: helo_hook::GuestIndices::new(&pre).ok(),
            mail: mail_hook::GuestIndices::new(&pre).ok(),
            rcpt: rcpt_hook::GuestIndices::new(&pre).ok(),
            data: data_hook::GuestIndices::new(&pre).ok(),
            configure: configure::GuestIndices::new(&pre).ok(),
        };
        if hooks.names().is_empty() {
            anyhow::bail!(
                "it exports no hook interface of postern:filter@0.2 (connect-hook, helo-hook, mail-hook, rcpt-hook, data-hook)"
            );
        }
        let plugin = LoadedPlugin {
            def: def.clone(),
            digest,
            artifact,
            pre,
            _build: component,
            hooks,
        };
        // Names match; now the function types: load() type-checks each hook.
        let mut live = self
            // An ID no entry has, so a guest caching by ID keeps nothing
            // of this trial config.
            .instantiate(
                &plugin,
                Arc::from([EntryConf::new("load".into(), "{}".into(), u32::MAX)]),
                0,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("trial instantiation failed")?;
        let (s, i) = (&mut live.store, &live.instance);
        let h = &plugin.hooks;
        let typed = (|| -> wasmtime::Result<()> {
            if let Some(x) = &h.connect {
                x.load(&mut *s, i)?;
            }
            if let Some(x) = &h.helo {
                x.load(&mut *s, i)?;
            }
            if let Some(x) = &h.mail {
                x.load(&mut *s, i)?;
            }
            if let Some(x) = &h.rcpt {
                x.load(&mut *s, i)?;
            }
            if let Some(x) = &h.data {
                x.load(&mut *s, i)?;
            }
            if let Some(x) = &h.configure {
                x.load(&mut *s, i)?;
            }
            Ok(())
        })();
        typed
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("an exported hook has the wrong type (built against another WIT?)")?;
        Ok(Arc::new(plugin))
    }

    /// A fresh instance with its own store, limits and CPU meter,
    /// serving the chain entries `confs`; `confs[current]` is what the
    /// instance sees while it starts (a guest may read its config during
    /// initialisation), and each call names its own entry.
    pub async fn instantiate(
        &self,
        plugin: &LoadedPlugin,
        confs: Arc<[EntryConf]>,
        current: usize,
    ) -> wasmtime::Result<Live> {
        let memory = usize::try_from(plugin.def.memory_limit.0).unwrap_or(usize::MAX);
        let caps = self.caps.get().cloned().unwrap_or_default();
        let state = HostState::new(confs, current, memory, caps, plugin.def.dns_time_limit.0);
        let mut store = Store::new(&self.engine, state);
        store.set_hostcall_fuel(HOSTCALL_FUEL);
        store.limiter(|s| &mut s.limits);
        store.data_mut().table.set_max_capacity(MAX_HOST_RESOURCES);
        store.set_max_component_handles(MAX_HANDLES);
        let meter = Arc::new(Meter::default());
        let ticks = meter.clone();
        store.epoch_deadline_callback(move |_| ticks.tick());
        store.set_epoch_deadline(1);
        let instance = meter
            .run(
                instantiate_limit(plugin),
                plugin.pre.instantiate_async(&mut store),
            )
            .await?;
        Ok(Live {
            store,
            instance,
            meter,
            funcs: Funcs::default(),
        })
    }
}

/// The engine's settings; `pool` for the daemon's engine, none for the
/// one that only compiles (the two make the same artifacts).
fn engine_config(cfg: &Wasm, pool: Option<PoolingAllocationConfig>) -> Config {
    let mut config = Config::new();
    config
        // Plugins are called one at a time per store; the component
        // model's concurrency machinery only costs time here.
        .concurrency_support(false)
        .epoch_interruption(true)
        .memory_reservation(cfg.max_memory.0)
        .memory_guard_size(64 << 10)
        .wasm_backtrace_details(WasmBacktraceDetails::Disable)
        .wasm_backtrace_max_frames(None);
    if let Some(pool) = pool {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// The name of a component's artifact: its content hash and the
/// engine's settings, which decide whether an artifact is usable.
fn artifact_name(engine: &Engine, digest: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(digest);
    let mut compat = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut compat);
    h.update(std::hash::Hasher::finish(&compat).to_le_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The component `bytes` (whose content hash is `digest`) for `engine`,
/// with its artifact: from the cache, or compiled now (and cached).
fn build(
    engine: &Engine,
    cache: Option<&Cache>,
    digest: &[u8; 32],
    bytes: &[u8],
) -> anyhow::Result<(Component, Vec<u8>)> {
    let name = artifact_name(engine, digest);
    if let Some(cache) = cache
        && let Some(artifact) = cache.load(&name)
    {
        match deserialize(engine, &artifact) {
            Ok(c) => return Ok((c, artifact)),
            // Sealed by us, yet refused (another build of wasmtime, say).
            Err(e) => tracing::warn!(
                "ignoring unusable plugin cache file {}: {e}",
                cache.path(&name).display()
            ),
        }
    }
    let started = std::time::Instant::now();
    let artifact = engine
        .precompile_component(bytes)
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("not a valid WebAssembly component")?;
    let ms = started.elapsed().as_millis();
    let short: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    match cache {
        Some(cache) => {
            tracing::info!(
                "plugin {short}: compiled in {ms} ms; caching in {}",
                cache.dir().display()
            );
            if let Err(e) = cache.store(&name, &artifact) {
                tracing::warn!(
                    "cannot cache compiled plugin in {}: {e}",
                    cache.path(&name).display()
                );
            }
        }
        None => tracing::info!("plugin {short}: compiled in {ms} ms (no cache)"),
    }
    Ok((deserialize(engine, &artifact)?, artifact))
}

/// Linear memory kept mapped between instances of a pooling slot.
///
/// Measured with six plugin entries on every stage and a fresh instance per
/// transaction: returning memory with madvise made every instance fault its
/// pages back in, copy-on-write faults on the memory image sent TLB
/// shootdown IPIs to the other core (~10% of all CPU), and resetting in
/// place with PAGEMAP_SCAN cut the CPU per message by ~20%. Without
/// PAGEMAP_SCAN wasmtime would memset the whole region on every reuse, so
/// the default is then 0.
fn keep_resident(cfg: &Wasm, pagemap: bool) -> usize {
    match cfg.keep_resident {
        Some(b) => usize::try_from(b.0).unwrap_or(0),
        None if pagemap => 2 << 20,
        None => 0,
    }
}

/// The limits of one call of the plugin: its `time_limit` of CPU, and a
/// wall-clock backstop that leaves room for `dns_time_limit` of lookups
/// when it may look up.
pub fn call_limit(plugin: &LoadedPlugin) -> Limit {
    let mut limit = Limit::cpu(plugin.def.time_limit.0);
    if plugin.def.grants.contains(&Grant::Dns) {
        limit.wall = limit.wall.saturating_add(plugin.def.dns_time_limit.0);
    }
    limit
}

/// The limits of instantiating the plugin: start-up code (a Python
/// interpreter) gets four calls' worth of CPU, and at least two seconds.
pub fn instantiate_limit(plugin: &LoadedPlugin) -> Limit {
    Limit::cpu(
        plugin
            .def
            .time_limit
            .0
            .saturating_mul(4)
            .max(Duration::from_secs(2)),
    )
}

/// Loads an artifact into the engine.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, artifact: &[u8]) -> anyhow::Result<Component> {
    // SAFETY: `artifact` was produced by `precompile_component` of an
    // engine with this engine's settings: either just now, or read from
    // the cache, whose MAC (checked by `Cache::load` over exactly these
    // bytes) only this daemon's key makes, over the artifact and its name,
    // which holds the engine's compatibility hash.
    unsafe { Component::deserialize(engine, artifact) }.map_err(|e| anyhow::anyhow!("{e:#}"))
}
