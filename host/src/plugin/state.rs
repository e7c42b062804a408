//! The data of one plugin instance's store: WASI with nothing granted, the
//! resource table, limits, and the current call's entry. The host
//! interfaces' implementations are in [`super::host`].

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::postern::filter::types;
use super::host::Caps;
use super::host::stderr::{Rate, Stderr};
use super::limits::{Budget, Limits};
use crate::message::HeaderAction;

/// Bytes a guest may hand the host in one host call or in one hook's
/// result (wasmtime's "hostcall fuel", 128 MiB by default). The largest
/// legitimate transfer is an outcome of 64 scores and 64 header values of
/// 16 KiB (~1 MiB); 16 times that fails the call instead of making the
/// host allocate whatever a guest sends. (Copies into a guest are bounded
/// by the host interfaces themselves.)
pub const HOSTCALL_FUEL: usize = 16 << 20;

/// What an instance needs to know of one chain entry that uses it.
#[derive(Debug, Clone)]
pub struct EntryConf {
    /// Chain entry label, for logs.
    pub label: Arc<str>,
    /// The entry's config, as JSON.
    pub config: Arc<str>,
    /// Its ID (equal IDs, equal configs) within the generation.
    pub config_id: u32,
    /// How fast its instances' stderr may reach the log, all together.
    pub stderr_rate: Arc<Rate>,
    /// Its `kv` namespace.
    pub kv_namespace: Arc<str>,
}

impl EntryConf {
    /// An entry with its own stderr rate.
    pub fn new(label: Arc<str>, config: Arc<str>, config_id: u32) -> EntryConf {
        EntryConf {
            kv_namespace: label.clone(),
            label,
            config,
            config_id,
            stderr_rate: Arc::default(),
        }
    }

    /// The same entry with the `kv` namespace `ns`.
    pub fn with_kv_namespace(self, ns: &str) -> EntryConf {
        EntryConf {
            kv_namespace: Arc::from(ns),
            ..self
        }
    }
}

/// `T` of `Store<T>`.
pub struct HostState {
    wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: Limits,
    /// Every entry this instance serves, set once when it is created: a
    /// call then only says which one is current. (Cloning an entry's
    /// shared `Arc`s on every call made both cores fight over their
    /// reference counts.)
    confs: Arc<[EntryConf]>,
    /// Index of the current call's entry in `confs`.
    current: usize,
    /// Queue ID (or session ID) of the current stage, for logs.
    pub(super) context: Option<Arc<str>>,
    /// `host.log` lines of the current call.
    pub(super) logged: u32,
    /// Header edits the current call asked for by host call (`edit`).
    pub(super) edits: Vec<HeaderAction>,
    /// What the guest writes to stderr, until it is logged.
    stderr: Stderr,
    /// The services behind the capabilities.
    pub(super) caps: Arc<Caps>,
    /// Wall-clock time one call's DNS lookups may take (`dns_time_limit`).
    dns_limit: std::time::Duration,
    /// What the current call has left of it.
    pub(super) dns_budget: Budget,
}

impl HostState {
    /// State for a new store serving `confs`, with `confs[current]` current.
    pub fn new(
        confs: Arc<[EntryConf]>,
        current: usize,
        memory: usize,
        caps: Arc<Caps>,
        dns_limit: std::time::Duration,
    ) -> HostState {
        let stderr = Stderr::default();
        HostState {
            // No environment, arguments, preopens or network: the guest's
            // libc may ask, and gets nothing. Its stderr goes to the log.
            wasi: WasiCtx::builder().stderr(stderr.clone()).build(),
            table: ResourceTable::new(),
            limits: Limits::new(memory),
            confs,
            current,
            context: None,
            logged: 0,
            edits: Vec::new(),
            stderr,
            caps,
            dns_limit,
            dns_budget: Budget::new(dns_limit),
        }
    }

    /// Makes `confs[index]` the entry of the next call.
    pub(super) fn set_current(&mut self, index: usize) {
        self.current = index;
        self.logged = 0;
        self.dns_budget = Budget::new(self.dns_limit);
        // Edits asked for outside a call (while the guest started) or by
        // a call that failed are nobody's.
        self.edits.clear();
    }

    /// Logs what the guest wrote to stderr, as the current entry's.
    pub(super) fn flush_stderr(&self) {
        let context = self.context.as_deref().unwrap_or("-");
        match self.conf() {
            Some(c) => self.stderr.flush(context, &c.label, &c.stderr_rate),
            None => self.stderr.flush(context, "?", &Rate::default()),
        }
    }

    /// Takes the edits the call asked for by host call.
    pub(super) fn take_edits(&mut self) -> Vec<HeaderAction> {
        std::mem::take(&mut self.edits)
    }

    /// The current call's chain entry.
    pub(super) fn conf(&self) -> Option<&EntryConf> {
        self.confs.get(self.current)
    }
}

impl Drop for HostState {
    /// What the guest wrote since the last call (while starting, or in a
    /// call that trapped: a panic message) is logged before it goes.
    fn drop(&mut self) {
        self.flush_stderr();
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}
