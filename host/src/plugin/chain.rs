//! Stage chains: the ordered plugin entries of each SMTP stage, built and
//! validated with a generation, and the per-session runner that calls them.
//!
//! Semantics (Postfix restriction lists): entries run in order; the first
//! definitive verdict ends the stage, `continue` passes on; scores and
//! header actions of every entry called are collected. A plugin failure
//! (trap, time or memory limit, pool exhausted) becomes a `451 4.3.0` or
//! is skipped, per the plugin's `on_error`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use wasmtime::component::Resource;
use wasmtime::{PoolConcurrencyLimitError, Trap};

use super::bindings::postern::filter::types as wit;
use super::input::{EnvelopeData, MessageData, ParsedMessage, SessionData};
use super::input::{EnvelopeInfo, Input, SessionInfo};
use super::limits::MemoryLimitExceeded;
use super::meter::TimeLimitExceeded;
use super::outcome::{Outcome, OverLimit, Score, Verdict};
use super::runtime::{Live, LoadedPlugin, Runtime, call_limit};
use super::state::EntryConf;
use crate::config::{ChainEntry, Chains as ChainConfig, Config, OnError, PluginDef};
use crate::message::HeaderAction;
use crate::policy_service::{Conditional, PolicyService, Query};
use crate::smtp::reply::r;

/// Warm instances kept per plugin when `reuse_instances` is on.
const WARM_POOL: usize = 16;

/// The SMTP stages that have chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Connection established.
    Connect,
    /// HELO/EHLO.
    Helo,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// End of message content.
    Data,
}

impl Stage {
    /// Every stage, in SMTP order.
    pub const ALL: [Stage; 5] = [
        Stage::Connect,
        Stage::Helo,
        Stage::Mail,
        Stage::Rcpt,
        Stage::Data,
    ];

    /// The stage with this config name.
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The stage's name in config and logs.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
        }
    }

    /// The SMTP command for log lines.
    pub fn command(self) -> &'static str {
        match self {
            Stage::Connect => "CONNECT",
            Stage::Helo => "EHLO",
            Stage::Mail => "MAIL",
            Stage::Rcpt => "RCPT",
            Stage::Data => "END-OF-MESSAGE",
        }
    }
}

/// A plugin: what an instance is made of. Every entry of every stage that
/// uses the plugin, whatever its config, shares one instance per
/// transaction (and one warm pool): the host tells the instance the
/// config of each call (`host.config`, `host.config-id`).
pub struct Slot {
    id: usize,
    /// The plugin.
    pub plugin: Arc<LoadedPlugin>,
    /// Every chain entry of the plugin (label, config), in the order of
    /// `Entry::index`; each instance gets this table once.
    confs: Arc<[EntryConf]>,
    warm: Mutex<Vec<Live>>,
    /// Its generation was replaced: instances are no longer kept warm
    /// (sessions still open on it get fresh ones until they end).
    retired: AtomicBool,
}

/// One entry of a chain.
pub enum Entry {
    /// A WebAssembly plugin with its own config.
    Wasm(WasmEntry),
    /// A Postfix SMTPD policy server (`check_policy_service`).
    PolicyService(Box<PolicyService>),
}

impl Entry {
    /// Label for logs.
    pub fn label(&self) -> &Arc<str> {
        match self {
            Entry::Wasm(w) => w.label(),
            Entry::PolicyService(p) => p.label(),
        }
    }
}

/// A chain entry that runs a plugin with its own config.
pub struct WasmEntry {
    /// The plugin.
    pub slot: Arc<Slot>,
    /// This entry's place in `slot.confs`.
    index: usize,
}

impl WasmEntry {
    /// Label for logs.
    pub fn label(&self) -> &Arc<str> {
        &self.slot.confs[self.index].label
    }
}

/// Every chain of a generation.
pub struct Chains {
    runtime: Option<Arc<Runtime>>,
    /// CPU time all plugin code of one transaction may use together.
    transaction_cpu: std::time::Duration,
    stages: HashMap<Stage, Vec<Arc<Entry>>>,
    /// All loaded plugins, for `check` and logs.
    pub plugins: Vec<Arc<LoadedPlugin>>,
}

impl std::fmt::Debug for Chains {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stages: Vec<String> = self
            .stages
            .iter()
            .map(|(s, e)| format!("{}={}", s.name(), e.len()))
            .collect();
        f.debug_struct("Chains").field("stages", &stages).finish()
    }
}

/// The first definitive verdict of a stage and who gave it.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Entry label.
    pub entry: Arc<str>,
    /// The verdict (never `Continue`).
    pub verdict: Verdict,
}

/// Everything a stage produced.
#[derive(Debug, Default)]
pub struct StageResult {
    /// The deciding verdict, if any entry gave one.
    pub decision: Option<Decision>,
    /// Scores of every entry called.
    pub scores: Vec<Score>,
    /// Header actions of every entry called.
    pub actions: Vec<HeaderAction>,
    /// The calls that failed (whatever their `on_error` made of them).
    pub failures: Vec<Failure>,
}

/// Why a plugin call failed.
#[derive(Debug)]
pub enum Failure {
    /// Its CPU time (or the wall-clock backstop) ran out.
    TimeLimit(String),
    /// The transaction's plugins used their CPU budget
    /// (`wasm.transaction_cpu`).
    Budget(std::time::Duration),
    /// Memory growth beyond the limit.
    MemoryLimit(String),
    /// No pooling slot free (what ran out, as wasmtime says).
    Overloaded(String),
    /// Any other trap or error.
    Trap(String),
    /// An outcome the host refuses (too many scores or actions, a header
    /// value too long).
    BadOutcome(String),
}

/// The kind of a [`Failure`], as fixtures name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// [`Failure::TimeLimit`].
    Time,
    /// [`Failure::Budget`].
    Budget,
    /// [`Failure::MemoryLimit`].
    Memory,
    /// [`Failure::Overloaded`].
    Overloaded,
    /// [`Failure::Trap`].
    Trap,
    /// [`Failure::BadOutcome`].
    Outcome,
}

impl FailureKind {
    /// The name fixtures use.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Time => "time",
            FailureKind::Budget => "budget",
            FailureKind::Memory => "memory",
            FailureKind::Overloaded => "overloaded",
            FailureKind::Trap => "trap",
            FailureKind::Outcome => "outcome",
        }
    }
}

impl Failure {
    /// Its kind.
    pub fn kind(&self) -> FailureKind {
        match self {
            Failure::TimeLimit(_) => FailureKind::Time,
            Failure::Budget(_) => FailureKind::Budget,
            Failure::MemoryLimit(_) => FailureKind::Memory,
            Failure::Overloaded(_) => FailureKind::Overloaded,
            Failure::Trap(_) => FailureKind::Trap,
            Failure::BadOutcome(_) => FailureKind::Outcome,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::TimeLimit(m) => f.write_str(m),
            Failure::Budget(b) => write!(
                f,
                "the transaction's plugins used their {} of CPU (wasm.transaction_cpu)",
                humantime::format_duration(*b)
            ),
            Failure::MemoryLimit(m) => write!(f, "{m}"),
            Failure::Overloaded(m) => {
                write!(f, "no free plugin instance slot (wasm.max_instances): {m}")
            }
            Failure::Trap(m) => write!(f, "trapped: {m}"),
            Failure::BadOutcome(m) => write!(f, "outcome refused: {m}"),
        }
    }
}

fn classify(e: &wasmtime::Error) -> Failure {
    if let Some(t) = e.downcast_ref::<TimeLimitExceeded>() {
        return Failure::TimeLimit(t.to_string());
    }
    if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return Failure::TimeLimit("time limit exceeded".into());
    }
    if let Some(m) = e.downcast_ref::<MemoryLimitExceeded>() {
        return Failure::MemoryLimit(m.to_string());
    }
    if let Some(p) = e.downcast_ref::<PoolConcurrencyLimitError>() {
        return Failure::Overloaded(p.to_string());
    }
    if let Some(over) = e.downcast_ref::<OverLimit>() {
        return Failure::BadOutcome(over.to_string());
    }
    // One log line: the trap or root cause, never a backtrace.
    let text = match e.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => e.root_cause().to_string(),
    };
    Failure::Trap(
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(300)
            .collect(),
    )
}

impl Chains {
    /// No chains at all.
    pub fn empty() -> Chains {
        Chains {
            runtime: None,
            transaction_cpu: crate::config::Wasm::default().transaction_cpu.0,
            stages: HashMap::new(),
            plugins: Vec::new(),
        }
    }

    /// Loads every `[[plugin]]` and builds the chains; validates that each
    /// entry's plugin exports the stage's hook and accepts the entry's
    /// config (`configure.check-config`).
    pub async fn build(config: &Config, runtime: Option<&Arc<Runtime>>) -> anyhow::Result<Chains> {
        let listeners = config
            .listeners
            .iter()
            .map(|l| (l.name(), l.address))
            .collect();
        let mut chains =
            Chains::build_inner(&config.plugins, &config.chain, runtime, listeners).await?;
        chains.transaction_cpu = config.wasm.transaction_cpu.0;
        Ok(chains)
    }

    /// [`Chains::build`] from the `[[plugin]]` and `[chain]` parts alone.
    pub async fn build_from(
        plugin_defs: &[PluginDef],
        chain: &ChainConfig,
        runtime: Option<&Arc<Runtime>>,
    ) -> anyhow::Result<Chains> {
        Chains::build_inner(plugin_defs, chain, runtime, HashMap::new()).await
    }

    /// [`Chains::build_from`], with the listeners' addresses for the
    /// policy services' requests.
    async fn build_inner(
        plugin_defs: &[PluginDef],
        chain: &ChainConfig,
        runtime: Option<&Arc<Runtime>>,
        listeners: HashMap<String, std::net::SocketAddr>,
    ) -> anyhow::Result<Chains> {
        let has_policy = chain
            .stages()
            .iter()
            .any(|(_, entries)| entries.iter().any(|e| e.plugin().is_none()));
        if plugin_defs.is_empty() && !has_policy {
            return Ok(Chains::empty());
        }
        let runtime = match plugin_defs.is_empty() {
            true => None,
            false => Some(
                runtime
                    .context("plugins are configured but the WebAssembly runtime is not available")?
                    .clone(),
            ),
        };
        let mut loaded: HashMap<String, Arc<LoadedPlugin>> = HashMap::new();
        let mut plugins = Vec::new();
        for (i, def) in plugin_defs.iter().enumerate() {
            let Some(runtime) = &runtime else { break };
            let p = runtime
                .load(def)
                .await
                .with_context(|| format!("plugin[{i}] {:?} ({})", def.name, def.path.display()))?;
            tracing::info!(
                "plugin {}: loaded {} ({}), hooks: {}",
                def.name,
                def.path.display(),
                p.digest,
                p.hooks.names().join(", ")
            );
            loaded.insert(def.name.clone(), p.clone());
            plugins.push(p);
        }
        // First every entry's config (each distinct config is checked
        // once), then one slot per plugin with the table of its entries,
        // then the chains.
        let mut configs: HashMap<(String, Arc<str>), u32> = HashMap::new();
        let mut confs: HashMap<String, Vec<EntryConf>> = HashMap::new();
        let mut placed: Vec<(Stage, Placed)> = Vec::new();
        let mut namespaces = std::collections::HashSet::new();
        for (stage_name, entries) in chain.stages() {
            let stage = Stage::from_name(stage_name)
                .with_context(|| format!("chain.{stage_name}: not a stage"))?;
            for (i, e) in entries.iter().enumerate() {
                let key = format!("chain.{stage_name}[{i}]");
                let label = e.label();
                let e = match e {
                    ChainEntry::Wasm(w) => w,
                    ChainEntry::PolicyService(p) => {
                        let service = PolicyService::new(p, e.label(), listeners.clone())
                            .map_err(|m| anyhow::anyhow!("{key}.{m}"))?;
                        placed.push((stage, Placed::Policy(Box::new(service))));
                        continue;
                    }
                };
                let plugin = loaded
                    .get(&e.plugin)
                    .with_context(|| format!("{key}: no [[plugin]] named {:?}", e.plugin))?;
                if !plugin.hooks.has(stage_name) {
                    anyhow::bail!(
                        "{key}: plugin {:?} does not export {stage_name}-hook (it exports: {})",
                        e.plugin,
                        plugin.hooks.names().join(", ")
                    );
                }
                let json = serde_json::to_string(&e.config)
                    .with_context(|| format!("{key}.config: cannot convert to JSON"))?;
                let config: Arc<str> = Arc::from(json.as_str());
                let known = configs.get(&(e.plugin.clone(), config.clone())).copied();
                let namespace = match &e.kv_namespace {
                    Some(shared) => shared.clone(),
                    None => crate::kv::entry_namespace(stage_name, label),
                };
                if e.kv_namespace.is_none()
                    && plugin.def.grants.contains(&crate::config::Grant::Kv)
                    && !namespaces.insert(namespace.clone())
                {
                    anyhow::bail!(
                        "{key}: another {stage_name} entry is labelled {:?}, and their kv namespaces would be one: give one a `name`, or both `kv_namespace = \"...\"` to share",
                        label
                    );
                }
                let conf = EntryConf::new(
                    Arc::from(label),
                    config,
                    known.unwrap_or_else(|| u32::try_from(configs.len()).unwrap_or(u32::MAX)),
                )
                .with_kv_namespace(&namespace);
                if let (None, Some(runtime)) = (known, &runtime) {
                    check_config(runtime, plugin, &conf)
                        .await
                        .with_context(|| format!("{key} ({})", conf.label))?;
                    configs.insert((e.plugin.clone(), conf.config.clone()), conf.config_id);
                }
                let list = confs.entry(e.plugin.clone()).or_default();
                list.push(conf);
                placed.push((stage, Placed::Wasm(e.plugin.clone(), list.len() - 1)));
            }
        }
        let mut slots: HashMap<String, Arc<Slot>> = HashMap::new();
        for (name, list) in confs {
            let id = slots.len();
            let plugin = loaded[&name].clone();
            slots.insert(
                name,
                Arc::new(Slot {
                    id,
                    plugin,
                    confs: Arc::from(list),
                    warm: Mutex::new(Vec::new()),
                    retired: AtomicBool::new(false),
                }),
            );
        }
        let mut stages: HashMap<Stage, Vec<Arc<Entry>>> = HashMap::new();
        for (stage, placed) in placed {
            let entry = match placed {
                Placed::Wasm(name, index) => Entry::Wasm(WasmEntry {
                    slot: slots[&name].clone(),
                    index,
                }),
                Placed::Policy(service) => Entry::PolicyService(service),
            };
            stages.entry(stage).or_default().push(Arc::new(entry));
        }
        Ok(Chains {
            runtime,
            transaction_cpu: crate::config::Wasm::default().transaction_cpu.0,
            stages,
            plugins,
        })
    }

    /// A reload replaced these chains: their warm instances are dropped
    /// now, and no more are kept. Sessions still open on them go on (with
    /// fresh instances); the chains, and the builds only they use, are
    /// freed when the last of them ends.
    pub fn retire(&self) {
        let slots = self.stages.values().flatten().filter_map(|e| match &**e {
            Entry::Wasm(w) => Some(&w.slot),
            Entry::PolicyService(_) => None,
        });
        for slot in slots {
            slot.retired.store(true, Ordering::Relaxed);
            let dropped = std::mem::take(&mut *slot.warm.lock().unwrap_or_else(|p| p.into_inner()));
            drop(dropped);
        }
    }

    /// True if the stage has at least one entry.
    pub fn has(&self, stage: Stage) -> bool {
        self.stages.get(&stage).is_some_and(|v| !v.is_empty())
    }

    /// Number of entries over all stages.
    pub fn len(&self) -> usize {
        self.stages.values().map(Vec::len).sum()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a chain entry goes, before the plugins' slots exist.
enum Placed {
    /// Plugin name and the entry's place in its slot's table.
    Wasm(String, usize),
    /// A policy service, complete.
    Policy(Box<PolicyService>),
}

async fn check_config(
    runtime: &Runtime,
    plugin: &LoadedPlugin,
    conf: &EntryConf,
) -> anyhow::Result<()> {
    let Some(idx) = &plugin.hooks.configure else {
        return Ok(());
    };
    let mut live = runtime
        .instantiate(plugin, Arc::from([conf.clone()]), 0)
        .await
        .map_err(|e| anyhow::anyhow!("{}", classify(&e)))?;
    live.store.set_epoch_deadline(1);
    let guest = idx
        .load(&mut live.store, &live.instance)
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let meter = live.meter.clone();
    match meter
        .run(call_limit(plugin), guest.call_check_config(&mut live.store))
        .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(msg)) => anyhow::bail!("config refused by the plugin: {msg}"),
        Err(e) => anyhow::bail!("check-config failed: {}", classify(&e)),
    }
}

/// Different header edits all the plugins of one transaction may ask
/// for (an RCPT hook runs once per recipient: 64 per outcome is not a
/// bound on a transaction). More is a plugin failure.
pub const MAX_TX_EDITS: usize = 256;

/// Bytes of names and values those edits may hold together (a DKIM or ARC
/// set is a few kilobytes): the host keeps them until the message is
/// queued.
pub const MAX_TX_EDIT_BYTES: usize = 256 << 10;

/// Different scores (chain entry and symbol) of one transaction.
pub const MAX_TX_SCORES: usize = 256;

/// What the plugins of the current transaction asked for, for the
/// per-transaction bounds: hashes of the different edits and scores, so
/// that a repeat (the same answer for every recipient) counts once.
#[derive(Debug, Default)]
struct Tally {
    /// Keyed per transaction: no one can aim at collisions.
    hasher: std::hash::RandomState,
    edits: HashSet<u64>,
    edit_bytes: usize,
    scores: HashSet<u64>,
}

impl Tally {
    /// Counts an outcome's edits and scores; an error says which bound it
    /// would pass (nothing of it is counted then).
    fn admit(&mut self, o: &Outcome) -> Result<(), String> {
        use std::hash::BuildHasher;
        let hasher = &self.hasher;
        let mut new_edits: HashSet<u64> = HashSet::new();
        let mut new_bytes = 0usize;
        for a in &o.actions {
            let h = hasher.hash_one(a);
            if !self.edits.contains(&h) && new_edits.insert(h) {
                new_bytes += a.size();
            }
        }
        let new_scores: HashSet<u64> = o
            .scores
            .iter()
            .map(|s| hasher.hash_one((&*s.entry, &s.symbol)))
            .filter(|h| !self.scores.contains(h))
            .collect();
        if self.edits.len() + new_edits.len() > MAX_TX_EDITS {
            return Err(format!(
                "the plugins of this transaction asked for more than {MAX_TX_EDITS} different header edits"
            ));
        }
        if self.edit_bytes + new_bytes > MAX_TX_EDIT_BYTES {
            return Err(format!(
                "the plugins of this transaction asked for header edits of more than {MAX_TX_EDIT_BYTES} bytes"
            ));
        }
        if self.scores.len() + new_scores.len() > MAX_TX_SCORES {
            return Err(format!(
                "the plugins of this transaction gave more than {MAX_TX_SCORES} different scores"
            ));
        }
        self.edits.extend(new_edits);
        self.edit_bytes += new_bytes;
        self.scores.extend(new_scores);
        Ok(())
    }
}

/// Calls the chains for one SMTP session.
pub struct PluginSession {
    chains: Arc<Chains>,
    /// Instances of the current transaction, by slot ID.
    live: HashMap<usize, (Arc<Slot>, Live)>,
    /// What the current transaction's plugins asked for.
    tally: Tally,
    /// CPU time plugin code used in the current transaction.
    cpu: std::time::Duration,
}

impl PluginSession {
    /// A runner for a session of the given generation's chains.
    pub fn new(chains: Arc<Chains>) -> PluginSession {
        PluginSession {
            chains,
            live: HashMap::new(),
            tally: Tally::default(),
            cpu: std::time::Duration::ZERO,
        }
    }

    /// True if the stage has entries (so the caller can skip building input).
    pub fn has(&self, stage: Stage) -> bool {
        self.chains.has(stage)
    }

    /// Runs a stage's chain. `context` (queue ID or session ID) prefixes
    /// the plugins' log lines.
    pub async fn run(&mut self, stage: Stage, input: &Input<'_>, context: &str) -> StageResult {
        let mut result = StageResult::default();
        // One reference for the whole stage: the entries are iterated in
        // place, their shared `Arc`s are not touched per call.
        let chains = self.chains.clone();
        let Some(entries) = chains.stages.get(&stage) else {
            return result;
        };
        let runtime = chains.runtime.as_deref();
        let Some(args) = Args::new(input, stage, context) else {
            return result;
        };
        // The instances this stage uses, each with the session, envelope
        // (and message) lent to it once for all its entries' calls.
        let mut held: Vec<Held> = Vec::new();
        // The stage's actions, each once (a hash, not a scan: an RCPT
        // stage of many entries each asking for many).
        let mut seen: HashSet<HeaderAction> = HashSet::new();
        // DEFER_IF_PERMIT / DEFER_IF_REJECT of policy services, applied
        // when the stage's verdict is known.
        let mut conditionals: Vec<(Arc<str>, Conditional)> = Vec::new();
        for entry in entries {
            let call = match (&**entry, runtime) {
                (Entry::Wasm(w), Some(runtime)) => self.call(runtime, w, &args, &mut held).await,
                (Entry::Wasm(_), None) => Err(Failure::Trap("no WebAssembly runtime".into())),
                (Entry::PolicyService(p), _) => {
                    let answer = p.check(&args.query()).await;
                    if let Some(c) = answer.conditional {
                        conditionals.push((p.label().clone(), c));
                    }
                    Ok(answer.outcome)
                }
            };
            let call = call.and_then(|o| {
                self.tally
                    .admit(&o)
                    .map(|()| o)
                    .map_err(Failure::BadOutcome)
            });
            let outcome = match call {
                Ok(o) => o,
                Err(failure) => {
                    // No free slot is never skipped: clients that hold
                    // slots must not be able to switch policy off.
                    let on_error = match (&failure, &**entry) {
                        (Failure::Overloaded(_) | Failure::Budget(_), _) => OnError::Tempfail,
                        (_, Entry::Wasm(w)) => w.slot.plugin.def.on_error,
                        (_, Entry::PolicyService(_)) => OnError::Tempfail,
                    };
                    tracing::warn!(
                        "{context}: plugin {} failed at {}: {failure}; on_error={}",
                        entry.label(),
                        stage.name(),
                        match on_error {
                            OnError::Tempfail => "tempfail",
                            OnError::Continue => "continue",
                        }
                    );
                    result.failures.push(failure);
                    match on_error {
                        OnError::Continue => continue,
                        OnError::Tempfail => {
                            result.decision = Some(Decision {
                                entry: entry.label().clone(),
                                verdict: Verdict::Tempfail(r(
                                    451,
                                    4,
                                    3,
                                    0,
                                    "Error: temporary failure in a policy plugin, try again later",
                                )),
                            });
                            break;
                        }
                    }
                }
            };
            result.scores.extend(outcome.scores);
            for a in outcome.actions {
                if seen.insert(a.clone()) {
                    result.actions.push(a);
                }
            }
            if outcome.verdict.is_definitive() {
                result.decision = Some(Decision {
                    entry: entry.label().clone(),
                    verdict: outcome.verdict,
                });
                break;
            }
        }
        for h in held {
            self.release(h);
        }
        let verdict = result.decision.as_ref().map(|d| &d.verdict);
        if let Some((entry, verdict)) = conditionals
            .iter()
            .find_map(|(label, c)| Some((label.clone(), c.apply(verdict)?)))
        {
            result.decision = Some(Decision { entry, verdict });
        }
        result
    }

    /// Ends the transaction: its fresh instances are dropped (warm ones went
    /// back to their pool after each stage). Instances created at connect
    /// or HELO serve the session's first transaction.
    pub fn end_transaction(&mut self) {
        self.tally = Tally::default();
        for (_, (slot, live)) in self.live.drain() {
            recycle(&slot, live);
        }
        self.cpu = std::time::Duration::ZERO;
    }

    /// The instance for `slot` in this stage: one already held, the
    /// transaction's, a warm one, or a new one.
    async fn acquire(
        &mut self,
        runtime: &Runtime,
        entry: &WasmEntry,
        args: &Args<'_>,
        held: &mut Vec<Held>,
    ) -> Result<usize, Failure> {
        let slot = &entry.slot;
        if let Some(i) = held.iter().position(|h| h.slot.id == slot.id) {
            return Ok(i);
        }
        let mut live = match self.live.remove(&slot.id) {
            Some((_, live)) => live,
            None => match take_warm(slot) {
                Some(live) => live,
                None => {
                    let live = runtime
                        .instantiate(&slot.plugin, slot.confs.clone(), entry.index)
                        .await
                        .map_err(|e| classify(&e))?;
                    self.cpu += live.meter.spent();
                    live
                }
            },
        };
        let lent = Lent::push(&mut live, args).map_err(|e| classify(&e))?;
        live.store.data_mut().context = Some(args.context.clone());
        held.push(Held {
            slot: slot.clone(),
            live,
            lent,
        });
        Ok(held.len() - 1)
    }

    /// Gives a stage's instance back: the lent resources are deleted; a
    /// warm instance returns to its pool, a fresh one stays with the
    /// transaction.
    fn release(&mut self, mut h: Held) {
        if h.lent.delete(&mut h.live).is_err() {
            // The table is inconsistent; this instance is not reused.
            return;
        }
        h.live.store.data_mut().context = None;
        if h.slot.plugin.def.reuse_instances {
            // Warm instances go back to the pool after every stage: a few
            // hot instances per plugin serve all sessions, instead of one
            // per open transaction going cold in the CPU caches.
            recycle(&h.slot, h.live);
        } else {
            // A fresh instance lives until the end of the transaction:
            // from connect (or MAIL FROM) to the end of that message.
            let id = h.slot.id;
            self.live.insert(id, (h.slot, h.live));
        }
    }

    async fn call(
        &mut self,
        runtime: &Runtime,
        entry: &WasmEntry,
        args: &Args<'_>,
        held: &mut Vec<Held>,
    ) -> Result<Outcome, Failure> {
        // A client must not make the host work without end: past the
        // transaction's budget no plugin runs, whatever its on_error.
        if self.cpu >= self.chains.transaction_cpu {
            return Err(Failure::Budget(self.chains.transaction_cpu));
        }
        let i = self.acquire(runtime, entry, args, held).await?;
        let h = &mut held[i];
        let plugin = &entry.slot.plugin;
        h.live.store.data_mut().set_current(entry.index);
        h.live.store.set_epoch_deadline(1);
        let meter = h.live.meter.clone();
        let result = meter
            .run(
                call_limit(plugin),
                invoke(&mut h.live, &h.lent, plugin, args),
            )
            .await;
        self.cpu += meter.spent();
        tracing::debug!(
            "{}: plugin {} at {}: {} us of CPU",
            args.context,
            entry.label(),
            args.stage.name(),
            meter.spent().as_micros()
        );
        // Before the failure's own line: a panic message says why.
        h.live.store.data().flush_stderr();
        match result {
            Ok(o) => {
                // Edits by host call come first: they were asked for
                // before the outcome was returned.
                let edits = h.live.store.data_mut().take_edits();
                let mut outcome =
                    Outcome::from_wit(o, entry.label()).map_err(Failure::BadOutcome)?;
                if !edits.is_empty() {
                    outcome.actions.splice(0..0, edits);
                }
                Ok(outcome)
            }
            Err(e) => {
                // A trapped instance is poisoned: it is dropped here.
                held.swap_remove(i);
                Err(classify(&e))
            }
        }
    }
}

impl Drop for PluginSession {
    fn drop(&mut self) {
        self.end_transaction();
    }
}

fn take_warm(slot: &Slot) -> Option<Live> {
    if !slot.plugin.def.reuse_instances || slot.retired.load(Ordering::Relaxed) {
        return None;
    }
    slot.warm.lock().unwrap_or_else(|p| p.into_inner()).pop()
}

fn recycle(slot: &Slot, live: Live) {
    if slot.plugin.def.reuse_instances {
        let mut warm = slot.warm.lock().unwrap_or_else(|p| p.into_inner());
        // Under the lock: `retire` sets the flag, then empties the pool.
        if warm.len() < WARM_POOL && !slot.retired.load(Ordering::Relaxed) {
            warm.push(live);
        }
    }
}

/// An instance in use by one stage.
struct Held {
    slot: Arc<Slot>,
    live: Live,
    lent: Lent,
}

/// The session, envelope and message lent to one instance for a stage:
/// host resources the guest reads through getters, so it copies only what
/// it needs.
struct Lent {
    session: Resource<SessionData>,
    envelope: Resource<EnvelopeData>,
    message: Option<Resource<MessageData>>,
}

impl Lent {
    fn push(live: &mut Live, args: &Args<'_>) -> wasmtime::Result<Lent> {
        let table = &mut live.store.data_mut().table;
        let session = table.push(SessionData(args.session.clone()))?;
        let envelope = table.push(EnvelopeData(args.envelope.clone()))?;
        let message = if args.stage == Stage::Data {
            let parsed = args
                .message
                .clone()
                .unwrap_or_else(|| Arc::new(ParsedMessage::new(Arc::default())));
            Some(table.push(MessageData(parsed))?)
        } else {
            None
        };
        Ok(Lent {
            session,
            envelope,
            message,
        })
    }

    fn delete(self, live: &mut Live) -> wasmtime::Result<()> {
        let table = &mut live.store.data_mut().table;
        table.delete(self.session)?;
        table.delete(self.envelope)?;
        if let Some(m) = self.message {
            table.delete(m)?;
        }
        Ok(())
    }
}

/// What the hooks of one stage are lent, built once for every entry.
struct Args<'a> {
    stage: Stage,
    /// Queue ID or session ID, for the plugins' log lines.
    context: Arc<str>,
    session: Arc<SessionInfo>,
    envelope: Arc<EnvelopeInfo>,
    message: Option<Arc<ParsedMessage>>,
    input: &'a Input<'a>,
}

impl<'a> Args<'a> {
    /// The same, as a policy service's query.
    fn query(&self) -> Query<'_> {
        Query {
            stage: self.stage,
            context: &self.context,
            session: &self.session,
            envelope: &self.envelope,
            recipient: self.input.recipient,
            message_size: self.input.message.as_ref().map(|m| m.len()),
        }
    }

    fn new(input: &'a Input<'a>, stage: Stage, context: &str) -> Option<Args<'a>> {
        Some(Args {
            stage,
            context: Arc::from(context),
            session: input.session.clone()?,
            envelope: input.envelope.clone().unwrap_or_default(),
            message: input
                .message
                .clone()
                .map(|content| Arc::new(ParsedMessage::new(content))),
            input,
        })
    }
}

/// Looks a hook up once per instance (type-checking it) and returns the
/// instance's cached function.
macro_rules! hook {
    ($live:expr, $hooks:expr, $field:ident, $missing:expr) => {{
        match &mut $live.funcs.$field {
            Some(g) => &*g,
            slot @ None => &*slot.insert(
                $hooks
                    .$field
                    .as_ref()
                    .ok_or_else($missing)?
                    .load(&mut $live.store, &$live.instance)?,
            ),
        }
    }};
}

async fn invoke(
    live: &mut Live,
    lent: &Lent,
    plugin: &LoadedPlugin,
    args: &Args<'_>,
) -> wasmtime::Result<wit::Outcome> {
    let stage = args.stage;
    let missing = || wasmtime::format_err!("plugin does not export the {} hook", stage.name());
    let h = &plugin.hooks;
    let s = Resource::<SessionData>::new_borrow(lent.session.rep());
    let e = Resource::<EnvelopeData>::new_borrow(lent.envelope.rep());
    match stage {
        Stage::Connect => {
            let g = hook!(live, h, connect, missing);
            g.call_on_connect(&mut live.store, s).await
        }
        Stage::Helo => {
            let g = hook!(live, h, helo, missing);
            g.call_on_helo(&mut live.store, s).await
        }
        Stage::Mail => {
            let g = hook!(live, h, mail, missing);
            g.call_on_mail(&mut live.store, s, e).await
        }
        Stage::Rcpt => {
            let g = hook!(live, h, rcpt, missing);
            let rcpt = args.input.recipient.unwrap_or("");
            let params: Vec<wit::Param> = args
                .input
                .rcpt_params
                .iter()
                .map(|(name, value)| wit::Param {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect();
            g.call_on_rcpt(&mut live.store, s, e, rcpt, &params).await
        }
        Stage::Data => {
            let g = hook!(live, h, data, missing);
            let own = lent
                .message
                .as_ref()
                .ok_or_else(|| wasmtime::format_err!("no message lent at the data stage"))?;
            let m = Resource::<MessageData>::new_borrow(own.rep());
            g.call_on_data(&mut live.store, s, e, m).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(edits: impl IntoIterator<Item = String>, scores: &[&str]) -> Outcome {
        Outcome {
            verdict: Verdict::Continue,
            scores: scores
                .iter()
                .map(|s| Score {
                    symbol: s.to_string(),
                    points: 1.0,
                    detail: None,
                    entry: Arc::from("e"),
                })
                .collect(),
            actions: edits
                .into_iter()
                .map(|name| HeaderAction::Add {
                    name,
                    value: "v".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_transaction_counts_each_different_edit_and_score_once() {
        let mut t = Tally::default();
        let names = |from: usize, n: usize| (from..from + n).map(|i| format!("X-{i}"));
        // The same 64 edits for 100 recipients: 64 in all.
        for _ in 0..100 {
            t.admit(&outcome(names(0, 64), &["S"])).unwrap();
        }
        t.admit(&outcome(names(64, MAX_TX_EDITS - 64), &[]))
            .unwrap();
        let e = t.admit(&outcome(names(1000, 1), &[])).unwrap_err();
        assert!(e.contains("more than 256 different header edits"), "{e}");
        // A refused outcome counted nothing; a known edit still passes.
        t.admit(&outcome(names(0, 1), &[])).unwrap();
        let scores: Vec<String> = (0..MAX_TX_SCORES).map(|i| format!("S{i}")).collect();
        let refs: Vec<&str> = scores.iter().map(String::as_str).collect();
        let e = t.admit(&outcome(names(0, 0), &refs)).unwrap_err();
        assert!(e.contains("more than 256 different scores"), "{e}");
        // Bytes: 16 edits of 16 KiB and their names pass 256 KiB.
        let mut t = Tally::default();
        let big = |i: usize| HeaderAction::Add {
            name: format!("X-{i}"),
            value: "v".repeat(16 << 10),
        };
        let mut o = outcome(names(0, 0), &[]);
        o.actions = (0..15).map(big).collect();
        t.admit(&o).unwrap();
        o.actions = vec![big(15)];
        assert!(t.admit(&o).unwrap_err().contains("bytes"));
    }
}
