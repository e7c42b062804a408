//! The data of one plugin instance's store: WASI with nothing granted, the
//! resource table, limits, and the host imports' implementation.

use std::sync::Arc;

use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::postern::filter::{host, types};
use super::chain::{EnvelopeInfo, SessionInfo};
use super::limits::Limits;
use crate::message::parse_headers_up_to;

/// Largest body chunk handed out by one `read-body` call.
const MAX_READ: usize = 1 << 20;

/// Header fields plugins see (the first ones; `read-body` still starts
/// after the whole header section). Real mail has tens; a message of
/// millions of tiny fields must not cost the host gigabytes.
pub const MAX_FIELDS: usize = 1000;

/// Message content with its header section parsed: once per stage,
/// whatever the number of plugins that read it.
#[derive(Debug)]
pub struct ParsedMessage {
    content: Arc<Vec<u8>>,
    headers: Vec<(String, String)>,
    body_start: usize,
}

impl ParsedMessage {
    /// Parses message content (header section and body).
    pub fn new(content: Arc<Vec<u8>>) -> ParsedMessage {
        let (fields, body_start) = parse_headers_up_to(&content, MAX_FIELDS);
        ParsedMessage {
            headers: fields.into_iter().map(|f| (f.name, f.value)).collect(),
            content,
            body_start,
        }
    }
}

/// The message behind a `message` resource handle (lent to one call).
#[derive(Debug)]
pub struct MessageData(pub Arc<ParsedMessage>);

/// The session behind a `session` resource handle (lent to one call).
#[derive(Debug)]
pub struct SessionData(pub Arc<SessionInfo>);

/// The envelope behind an `envelope` resource handle (lent to one call).
#[derive(Debug)]
pub struct EnvelopeData(pub Arc<EnvelopeInfo>);

/// What an instance needs to know of one chain entry that uses it.
#[derive(Debug, Clone)]
pub struct EntryConf {
    /// Chain entry label, for logs.
    pub label: Arc<str>,
    /// The entry's config, as JSON.
    pub config: Arc<str>,
    /// Its ID (equal IDs, equal configs) within the generation.
    pub config_id: u32,
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
    logged: u32,
}

/// `host.log` lines one call may write; then one line says the rest are
/// dropped. A plugin must not be able to flood the log.
const MAX_LOG_LINES: u32 = 100;

impl HostState {
    /// State for a new store serving `confs`, with `confs[current]` current.
    pub fn new(confs: Arc<[EntryConf]>, current: usize, memory: usize) -> HostState {
        HostState {
            // No environment, arguments, preopens or network: the guest's
            // libc may ask, and gets nothing.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: Limits::new(memory),
            confs,
            current,
            context: None,
            logged: 0,
        }
    }

    /// Makes `confs[index]` the entry of the next call.
    pub(super) fn set_current(&mut self, index: usize) {
        self.current = index;
        self.logged = 0;
    }

    fn conf(&self) -> Option<&EntryConf> {
        self.confs.get(self.current)
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

impl host::Host for HostState {
    fn log(&mut self, level: host::Level, message: String) -> wasmtime::Result<()> {
        self.logged = self.logged.saturating_add(1);
        let ctx = self.context.as_deref().unwrap_or("-");
        let entry = self.conf().map_or("?", |c| &*c.label);
        if self.logged > MAX_LOG_LINES {
            if self.logged == MAX_LOG_LINES + 1 {
                tracing::warn!(
                    "{ctx}: plugin {entry}: more than {MAX_LOG_LINES} log lines in one call; dropping the rest"
                );
            }
            return Ok(());
        }
        let message: String = message
            .chars()
            .take(2000)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        match level {
            host::Level::Trace => tracing::trace!("{ctx}: plugin {entry}: {message}"),
            host::Level::Debug => tracing::debug!("{ctx}: plugin {entry}: {message}"),
            host::Level::Info => tracing::info!("{ctx}: plugin {entry}: {message}"),
            host::Level::Warn => tracing::warn!("{ctx}: plugin {entry}: {message}"),
            host::Level::Error => tracing::error!("{ctx}: plugin {entry}: {message}"),
        }
        Ok(())
    }

    fn config(&mut self) -> wasmtime::Result<String> {
        Ok(self
            .conf()
            .map_or_else(|| "{}".to_string(), |c| c.config.to_string()))
    }

    fn config_id(&mut self) -> wasmtime::Result<u32> {
        Ok(self.conf().map_or(u32::MAX, |c| c.config_id))
    }
}

impl types::HostMessage for HostState {
    fn headers(&mut self, m: Resource<MessageData>) -> wasmtime::Result<Vec<types::Header>> {
        let m = &self.table.get(&m)?.0;
        Ok(m.headers
            .iter()
            .map(|(name, value)| types::Header {
                name: name.clone(),
                value: value.clone(),
            })
            .collect())
    }

    fn header(&mut self, m: Resource<MessageData>, name: String) -> wasmtime::Result<Vec<String>> {
        let m = &self.table.get(&m)?.0;
        Ok(m.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(&name))
            .map(|(_, v)| v.clone())
            .collect())
    }

    fn size(&mut self, m: Resource<MessageData>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&m)?.0.content.len() as u64)
    }

    fn body_size(&mut self, m: Resource<MessageData>) -> wasmtime::Result<u64> {
        let m = &self.table.get(&m)?.0;
        Ok((m.content.len() - m.body_start) as u64)
    }

    fn read_body(
        &mut self,
        m: Resource<MessageData>,
        offset: u64,
        len: u32,
    ) -> wasmtime::Result<Vec<u8>> {
        let m = &self.table.get(&m)?.0;
        let body = &m.content[m.body_start..];
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(body.len());
        let end = start
            .saturating_add((len as usize).min(MAX_READ))
            .min(body.len());
        Ok(body[start..end].to_vec())
    }

    fn drop(&mut self, m: Resource<MessageData>) -> wasmtime::Result<()> {
        self.table.delete(m)?;
        Ok(())
    }
}

impl types::HostSession for HostState {
    fn id(&mut self, s: Resource<SessionData>) -> wasmtime::Result<String> {
        Ok(self.table.get(&s)?.0.id.clone())
    }

    fn listener(&mut self, s: Resource<SessionData>) -> wasmtime::Result<String> {
        Ok(self.table.get(&s)?.0.listener.clone())
    }

    fn client_ip(&mut self, s: Resource<SessionData>) -> wasmtime::Result<String> {
        Ok(self.table.get(&s)?.0.client_ip.clone())
    }

    fn client_port(&mut self, s: Resource<SessionData>) -> wasmtime::Result<u16> {
        Ok(self.table.get(&s)?.0.client_port)
    }

    fn client_ptr(&mut self, s: Resource<SessionData>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&s)?.0.client_ptr.clone())
    }

    fn trusted(&mut self, s: Resource<SessionData>) -> wasmtime::Result<bool> {
        Ok(self.table.get(&s)?.0.trusted)
    }

    fn helo(&mut self, s: Resource<SessionData>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&s)?.0.helo.clone())
    }

    fn tls(&mut self, s: Resource<SessionData>) -> wasmtime::Result<Option<types::TlsInfo>> {
        Ok(self
            .table
            .get(&s)?
            .0
            .tls
            .as_ref()
            .map(|(version, cipher)| types::TlsInfo {
                version: version.clone(),
                cipher: cipher.clone(),
            }))
    }

    fn auth_user(&mut self, s: Resource<SessionData>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&s)?.0.auth_user.clone())
    }

    fn drop(&mut self, s: Resource<SessionData>) -> wasmtime::Result<()> {
        self.table.delete(s)?;
        Ok(())
    }
}

impl types::HostEnvelope for HostState {
    fn queue_id(&mut self, e: Resource<EnvelopeData>) -> wasmtime::Result<String> {
        Ok(self.table.get(&e)?.0.queue_id.clone())
    }

    fn mail_from(&mut self, e: Resource<EnvelopeData>) -> wasmtime::Result<String> {
        Ok(self.table.get(&e)?.0.mail_from.clone())
    }

    fn mail_params(&mut self, e: Resource<EnvelopeData>) -> wasmtime::Result<Vec<types::Param>> {
        Ok(self
            .table
            .get(&e)?
            .0
            .mail_params
            .iter()
            .map(|(name, value)| types::Param {
                name: name.clone(),
                value: value.clone(),
            })
            .collect())
    }

    fn rcpt_count(&mut self, e: Resource<EnvelopeData>) -> wasmtime::Result<u32> {
        Ok(u32::try_from(self.table.get(&e)?.0.rcpt_to.len()).unwrap_or(u32::MAX))
    }

    fn rcpt_to(&mut self, e: Resource<EnvelopeData>) -> wasmtime::Result<Vec<String>> {
        Ok(self.table.get(&e)?.0.rcpt_to.clone())
    }

    fn drop(&mut self, e: Resource<EnvelopeData>) -> wasmtime::Result<()> {
        self.table.delete(e)?;
        Ok(())
    }
}

impl types::Host for HostState {}
