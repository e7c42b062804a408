//! The daemon: binds listeners, recovers the spool, starts delivery, serves
//! sessions, reloads on SIGHUP and drains on SIGTERM.

pub mod account;
pub mod admin;
pub mod connection;
pub mod contain;
pub mod generation;
pub mod limits;
pub mod offload;
pub mod reply;
pub mod stage;
pub mod trace;
pub mod wire;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::deliver::journaled::{self, Journaled};
use crate::deliver::{self, DeliveryConfig};
use crate::dns::Dns;
use crate::plugin::cache::CacheSetting;
use crate::plugin::host::Caps;
use crate::plugin::runtime::CACHE_KEEP_UNUSED;
use crate::plugin::{Chains, Runtime};
use crate::route::Router;
use crate::spool::journal::{Journal, Touched};
use crate::spool::{DirSyncer, Spool};
use crate::tls::{Stream, Tls};
use connection::Connection;
use generation::Generation;
use limits::{ConnLimits, Refused, client_key};

/// State shared by every session of the daemon.
pub struct Shared {
    /// The spool.
    pub spool: Arc<Spool>,
    /// Journaled local delivery (`queue.journal`).
    pub journaled: Option<Arc<Journaled>>,
    /// Group commit for directory fsyncs (spool and Maildirs).
    pub syncer: DirSyncer,
    /// Hands queued messages to delivery.
    pub queue: deliver::Queue,
    /// The resolver.
    pub dns: Dns,
    /// Session counters.
    pub limits: Arc<ConnLimits>,
    /// Message content in memory over all sessions.
    pub buffered: Arc<crate::smtp::receiver::Buffered>,
    /// The current generation; sessions take a snapshot at connect.
    pub generation: ArcSwap<Generation>,
    /// Becomes true when the daemon is stopping.
    pub shutdown: watch::Receiver<bool>,
    /// The router used by delivery (replaced on reload).
    pub router: Arc<ArcSwap<Router>>,
    /// The SMTP client used by delivery (replaced on reload).
    pub smtp: Arc<ArcSwap<deliver::smtp::Client>>,
    /// Deliveries in flight per destination, across reloads.
    pub smtp_slots: Arc<deliver::smtp::Slots>,
    /// Where the config was loaded from (for reloads).
    pub config_path: PathBuf,
    next_generation: AtomicU64,
    /// The WebAssembly runtime, created when the first plugin is configured.
    runtime: std::sync::Mutex<Option<Arc<Runtime>>>,
    /// The services behind the plugins' capabilities (fixed until restart).
    caps: Caps,
    /// Serialises reloads.
    reloading: tokio::sync::Mutex<()>,
    /// TLS certificates and acceptor, when any listener uses TLS.
    pub tls: Option<Arc<Tls>>,
    /// Recent AUTH failures per client, for throttling.
    auth_failures: std::sync::Mutex<AuthFailures>,
}

/// Recent AUTH failures by client ([`client_key`]: an IPv4 address, or an
/// IPv6 network, a /64 by default: one subscriber's, which a client could
/// otherwise hop through for free). Forgotten after ten quiet minutes;
/// bounded in size.
#[derive(Debug, Default)]
pub struct AuthFailures {
    by_client: std::collections::HashMap<std::net::IpAddr, (u32, std::time::Instant)>,
    swept: Option<std::time::Instant>,
}

/// How long failures are remembered.
const AUTH_MEMORY: std::time::Duration = std::time::Duration::from_secs(600);

/// Clients remembered at most (each entry is some 40 bytes).
const AUTH_CLIENTS: usize = 100_000;

impl AuthFailures {
    /// Recent failures of the client (a [`client_key`]).
    pub fn recent(&self, client: std::net::IpAddr, now: std::time::Instant) -> u32 {
        self.by_client
            .get(&client)
            .filter(|(_, last)| now.duration_since(*last) < AUTH_MEMORY)
            .map_or(0, |(n, _)| *n)
    }

    /// Records a failure of the client (a [`client_key`]); returns its
    /// recent failures.
    pub fn record(&mut self, client: std::net::IpAddr, now: std::time::Instant) -> u32 {
        // Forget the quiet ones once a minute (not on every failure: the
        // sweep reads the whole map), or at once when the map is full.
        let full = self.by_client.len() >= AUTH_CLIENTS;
        if full
            || self
                .swept
                .is_none_or(|t| now.duration_since(t) > std::time::Duration::from_secs(60))
        {
            self.by_client
                .retain(|_, (_, last)| now.duration_since(*last) < AUTH_MEMORY);
            self.swept = Some(now);
        }
        let key = client;
        if self.by_client.len() >= AUTH_CLIENTS && !self.by_client.contains_key(&key) {
            // Full of active clients: this one is not tracked.
            return 1;
        }
        let e = self.by_client.entry(key).or_insert((0, now));
        if now.duration_since(e.1) >= AUTH_MEMORY {
            e.0 = 0;
        }
        e.0 = e.0.saturating_add(1);
        e.1 = now;
        e.0
    }
}

impl Shared {
    /// Runs a TLS handshake (with the configured timeout); logs failures.
    pub async fn handshake(&self, stream: Stream, client: &str) -> Option<Stream> {
        let tls = self.tls.as_ref()?;
        let timeout = self.generation.load().config.tls.handshake_timeout.0;
        match tokio::time::timeout(timeout, stream.upgrade(tls.acceptor())).await {
            Ok(Ok(s)) => {
                if let Some(info) = s.tls_info() {
                    tracing::info!(
                        "{client}: TLS established: {}{}",
                        info.received_comment(),
                        info.sni.map(|n| format!(", SNI {n}")).unwrap_or_default()
                    );
                }
                Some(s)
            }
            Ok(Err(e)) => {
                tracing::info!("{client}: TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                tracing::info!("{client}: TLS handshake timed out");
                None
            }
        }
    }

    /// Records an AUTH failure; returns the recent failures of that
    /// client (a [`client_key`]; forgotten after ten quiet minutes).
    pub fn auth_failed(&self, client: std::net::IpAddr) -> u32 {
        let mut map = self.auth_failures.lock().unwrap_or_else(|p| p.into_inner());
        map.record(client, std::time::Instant::now())
    }

    /// The recent AUTH failures of a client (a [`client_key`]).
    pub fn auth_recent(&self, client: std::net::IpAddr) -> u32 {
        let map = self.auth_failures.lock().unwrap_or_else(|p| p.into_inner());
        map.recent(client, std::time::Instant::now())
    }

    /// Loads the config again, builds the new generation beside the
    /// running one (plugins compiled and checked), and swaps it in
    /// atomically. On any error the old generation keeps serving.
    pub async fn reload(&self) -> anyhow::Result<u64> {
        let _one_at_a_time = self.reloading.lock().await;
        let config = Config::load(&self.config_path)?;
        let current = self.generation.load_full();
        let old: Vec<_> = current.config.listeners.iter().map(|l| l.address).collect();
        let new: Vec<_> = config.listeners.iter().map(|l| l.address).collect();
        if old != new {
            anyhow::bail!(
                "listener addresses changed: a restart is needed for that (nothing was reloaded)"
            );
        }
        if config.server.spool_dir != current.config.server.spool_dir {
            anyhow::bail!(
                "server.spool_dir changed: a restart is needed for that (nothing was reloaded)"
            );
        }
        // Settings fixed at start: the rest of the new config still applies.
        if config.queue.sync != current.config.queue.sync {
            tracing::warn!("reload: queue.sync changes at the next restart");
        }
        if config.queue.journal && self.journaled.is_none() {
            tracing::warn!("reload: queue.journal = true takes effect at the next restart");
        }
        // The delivery manager keeps the settings it started with.
        let (q, was) = (&config.queue, &current.config.queue);
        for (key, changed) in [
            (
                "queue.delivery_concurrency",
                q.delivery_concurrency != was.delivery_concurrency,
            ),
            ("queue.retry_initial", q.retry_initial != was.retry_initial),
            ("queue.retry_max", q.retry_max != was.retry_max),
            ("queue.max_lifetime", q.max_lifetime != was.max_lifetime),
            (
                "server.hostname (in delivered file names)",
                config.server.hostname != current.config.server.hostname,
            ),
        ] {
            if changed {
                tracing::warn!("reload: {key} changes for delivery at the next restart");
            }
        }
        if config.kv != current.config.kv {
            tracing::warn!("reload: [kv] changes take effect at the next restart");
        }
        let runtime = self.runtime_for(&config).await?;
        if let Some(rt) = &runtime
            && rt.settings().needs_restart_for(&config.wasm)
        {
            let running = rt.settings();
            for p in &config.plugins {
                if p.memory_limit.0 > running.max_memory.0 {
                    anyhow::bail!(
                        "plugin {}: memory_limit is above the running wasm.max_memory ({} bytes): a restart is needed for that (nothing was reloaded)",
                        p.name,
                        running.max_memory.0
                    );
                }
            }
            tracing::warn!("reload: [wasm] changes take effect at the next restart");
        }
        let certs = match &self.tls {
            Some(tls) => Some(tls.prepare(&config)?),
            // The acceptor and certificates are made at start (a key may
            // be readable by root only): a listener turned to TLS now would
            // advertise STARTTLS and drop every handshake.
            None if config.uses_tls() => anyhow::bail!(
                "a listener now uses TLS, but Postern was started without any: a restart is needed for that (nothing was reloaded)"
            ),
            None => None,
        };
        let id = self.next_generation.fetch_add(1, Ordering::SeqCst);
        for w in config.warnings() {
            tracing::warn!("reload: {}: {}", w.key, w.message);
        }
        let smtp = deliver::smtp::Client::new(
            &config,
            self.dns.resolver().clone(),
            tokio::runtime::Handle::current(),
            self.smtp_slots.clone(),
        )
        .context("smtp_client")?;
        let next = Generation::build(config, id, runtime.as_ref()).await?;
        // Its tables are read again when their files change.
        next.router.watch();
        let (plugins, entries) = (next.chains.plugins.len(), next.chains.len());
        // Everything is built: only now does anything change.
        if let (Some(tls), Some(certs)) = (&self.tls, certs) {
            tls.install(certs);
        }
        self.router.store(next.router.clone());
        self.smtp.store(Arc::new(smtp));
        if let Some(rt) = runtime {
            tokio::spawn(tidy_plugin_cache(rt, next.chains.clone()));
        }
        self.generation.store(Arc::new(next));
        // Its warm instances go now; the rest when its last session ends.
        current.chains.retire();
        tracing::info!(
            "reload: generation {id} serves new sessions ({plugins} plugins, {entries} chain entries); sessions already open keep generation {} until their next transaction",
            current.id
        );
        Ok(id)
    }

    /// The runtime, made (and its pool sized) for the first config with
    /// plugins.
    async fn runtime_for(&self, config: &Config) -> anyhow::Result<Option<Arc<Runtime>>> {
        if config.plugins.is_empty() {
            return Ok(None);
        }
        if let Some(rt) = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(Some(rt));
        }
        let made = Runtime::new(&config.wasm, &daemon_cache(config, true), &config.plugins).await?;
        made.provide(self.caps.clone());
        let mut rt = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Some(rt.get_or_insert(made).clone()))
    }
}

/// The daemon's compile cache: `[wasm] cache_dir` and `cache_key`, by
/// default in the spool. The daemon (as server.user, after the drop)
/// makes the key at its first start (`create_key`); `check` only uses it.
pub fn daemon_cache(config: &Config, create_key: bool) -> CacheSetting {
    let spool = &config.server.spool_dir;
    CacheSetting::Disk {
        dir: config.wasm.cache_dir_in(spool),
        key: config.wasm.cache_key_in(spool),
        create_key,
    }
}

/// Marks the generation's plugin artifacts as used, and removes those no
/// generation has used for [`CACHE_KEEP_UNUSED`] (each plugin update leaves
/// one behind; a Python plugin's is tens of megabytes).
async fn tidy_plugin_cache(runtime: Arc<Runtime>, chains: Arc<Chains>) {
    let _ = tokio::task::spawn_blocking(move || {
        let keep: Vec<&Path> = chains
            .plugins
            .iter()
            .map(|p| p.artifact.as_path())
            .collect();
        let (files, bytes) = runtime.evict_cache(&keep, CACHE_KEEP_UNUSED);
        if files > 0 {
            tracing::info!(
                "plugin cache: removed {files} files ({} KiB) that no generation used for {} days",
                bytes / 1024,
                CACHE_KEEP_UNUSED.as_secs() / 86_400
            );
        }
    })
    .await;
}

/// Kernel send buffer of every session's socket (accepted sockets inherit
/// the listener's). A session sends only replies, a few hundred bytes at a
/// time, so this costs nothing; without it Linux grows the buffer of a
/// client that never reads up to `tcp_wmem`'s 4 MiB of unsent replies.
const SESSION_SEND_BUFFER: u32 = 64 * 1024;

/// A socket bound to `address` (with SO_REUSEADDR, as `TcpListener::bind`
/// does), not yet listening.
fn bind(address: std::net::SocketAddr) -> std::io::Result<TcpSocket> {
    let sock = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.set_send_buffer_size(SESSION_SEND_BUFFER)?;
    sock.bind(address)?;
    Ok(sock)
}

/// Runs the daemon in the foreground until SIGTERM/SIGINT.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    for w in config.warnings() {
        tracing::warn!("config: {}: {}", w.key, w.message);
    }
    // Root's part, and all of it: give the spool (and Maildir base, plugin
    // cache) to server.user, bind the listeners, read the TLS keys the
    // operator configured. Root never works inside the account's spool or
    // cache: recovery, the journal, a self-signed certificate and plugin
    // artifacts all come after the drop.
    let account = account::prepare(&config)?;
    // Bound now (port 25 needs root), listening only once everything is
    // ready: until then a client is refused, as if Postern were not
    // running, rather than left waiting for a greeting.
    let mut sockets = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let sock = bind(l.address)
            .with_context(|| format!("listener[{i}]: cannot listen on {}", l.address))?;
        sockets.push((i, l.address, sock));
    }
    let configured_keys = config.tls.default_pair().is_some();
    let early_tls = if configured_keys {
        Tls::from_config(&config).context("TLS set-up failed")?
    } else {
        None
    };
    if let Some(account) = &account {
        crate::privileges::drop_to(account)?;
        tracing::info!(
            "running as user {} (uid {}, gid {})",
            account.name,
            account.uid,
            account.gid
        );
    }
    let tls = if configured_keys {
        early_tls
    } else {
        Tls::from_config(&config).context("TLS set-up failed")?
    };
    // The plugins' capabilities share the daemon's resolver; the store
    // opens (or connects) on first use, as server.user.
    let dns = Dns::new(&config.dns).context("cannot set up the resolver")?;
    let caps = Caps {
        dns: Some(Arc::new(dns.clone())),
        kv: Some(Arc::new(crate::kv::Kv::new(
            &config.kv,
            &config.server.spool_dir,
        ))),
    };
    let runtime = if config.plugins.is_empty() {
        None
    } else {
        let rt = Runtime::new(&config.wasm, &daemon_cache(&config, true), &config.plugins).await?;
        rt.provide(caps.clone());
        Some(rt)
    };
    let current = Generation::build(config, 1, runtime.as_ref()).await?;
    current.router.watch();
    if let Some(rt) = &runtime {
        tokio::spawn(tidy_plugin_cache(rt.clone(), current.chains.clone()));
    }
    let cfg = &current.config;

    let syncer = DirSyncer::new(cfg.queue.sync);
    // Queue files of version 1 name local recipients by user and tag.
    crate::spool::format::set_v1_delimiter(cfg.local.recipient_delimiter.chars().next());
    let spool = Arc::new(
        Spool::open(&cfg.server.spool_dir, syncer.clone())
            .with_context(|| format!("cannot open spool {}", cfg.server.spool_dir.display()))?,
    );
    let mut recovered = spool.recover().context("spool recovery failed")?;
    // The journal is read (and what it holds delivered) even when it is
    // switched off now: it may hold messages from a run that used it.
    // The journal's bulk sync and the spool's group commit share one
    // descriptor per file system, so that neither misses an error the
    // other collected.
    let touched = Arc::new(Touched::new(syncer.filesystems().clone()));
    let journal_dir = cfg.server.spool_dir.join("journal");
    let (journal, leftovers) =
        Journal::open(&journal_dir, touched.clone(), cfg.queue.journal_seal_idle.0)
            .with_context(|| format!("cannot open the journal {}", journal_dir.display()))?;
    // Maildir copies are made as the mail user, never as root. Record by
    // record: what can be neither delivered nor spooled now stays in the
    // journal and is tried again while running; the rest is scheduled.
    let router_now = current.router.clone();
    let hostname = cfg.server.hostname.clone();
    let (spool2, touched2, journal2, syncer2) = (
        spool.clone(),
        touched.clone(),
        journal.clone(),
        syncer.clone(),
    );
    let recovery = tokio::task::spawn_blocking(move || {
        journaled::recover(
            &journal2,
            leftovers,
            &router_now,
            &hostname,
            &spool2,
            &touched2,
            &syncer2,
        )
    })
    .await?;
    recovered.extend(recovery.spooled);
    recovered.sort();
    recovered.dedup();
    if !recovered.is_empty() {
        tracing::info!(
            "recovered {} queued messages from the spool",
            recovered.len()
        );
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let router = Arc::new(ArcSwap::from(current.router.clone()));
    let smtp_slots: Arc<deliver::smtp::Slots> = Arc::default();
    let smtp = Arc::new(ArcSwap::from_pointee(
        deliver::smtp::Client::new(
            cfg,
            dns.resolver().clone(),
            tokio::runtime::Handle::current(),
            smtp_slots.clone(),
        )
        .context("smtp_client")?,
    ));
    let delivery_cfg = DeliveryConfig {
        hostname: cfg.server.hostname.clone(),
        concurrency: cfg.queue.delivery_concurrency,
        retry_initial: cfg.queue.retry_initial.0,
        retry_max: cfg.queue.retry_max.0,
        max_lifetime: cfg.queue.max_lifetime.0,
        delay_warning: cfg.queue.delay_warning.map(|w| w.0),
    };
    let (queue, delivery) = deliver::start(
        spool.clone(),
        router.clone(),
        syncer.clone(),
        delivery_cfg.clone(),
        smtp.clone(),
        recovered,
        shutdown_rx.clone(),
    );
    // The delivery threads run even with the journal off for new mail:
    // they retry what recovery left, and reclaim its segments.
    let journaled = Arc::new(
        Journaled::start(
            journal,
            spool.clone(),
            queue.clone(),
            touched,
            syncer.clone(),
            delivery_cfg,
        )
        .context("cannot start the delivery threads")?,
    );
    // Spooled mail (for the delivery manager) is journaled too: no queue
    // file unless its first attempt leaves it unfinished. Not with
    // direct_delivery = false, which asks for a queue file before 250.
    if cfg.queue.journal && cfg.queue.direct_delivery {
        journaled.take_spooled_mail();
    }
    if !recovery.unfinished.is_empty() {
        journaled.retry_recovered(
            recovery.unfinished,
            current.router.clone(),
            &cfg.server.hostname,
        );
    }
    let journaled_for_sessions =
        (cfg.queue.journal && cfg.queue.direct_delivery).then(|| journaled.clone());
    if let Some(tls) = &tls {
        let tls = tls.clone();
        let every = cfg.tls.reload_interval.0;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let tls = tls.clone();
                let _ = tokio::task::spawn_blocking(move || tls.reload_if_changed()).await;
            }
        });
    }
    let grace = cfg.server.shutdown_grace.0;
    let current_spool_dir = cfg.server.spool_dir.clone();
    let listening: Vec<String> = cfg
        .listeners
        .iter()
        .map(|l| format!("{} ({})", l.address, l.name()))
        .collect();
    let shared = Arc::new(Shared {
        spool,
        journaled: journaled_for_sessions,
        syncer,
        queue,
        dns,
        limits: Arc::new(ConnLimits::default()),
        buffered: Arc::default(),
        generation: ArcSwap::from_pointee(current),
        shutdown: shutdown_rx,
        router,
        smtp,
        smtp_slots,
        config_path: config_path.to_path_buf(),
        next_generation: AtomicU64::new(2),
        runtime: std::sync::Mutex::new(runtime),
        caps,
        reloading: tokio::sync::Mutex::new(()),
        tls,
        auth_failures: std::sync::Mutex::new(AuthFailures::default()),
    });
    let admin_path = admin::socket_path(&current_spool_dir);
    admin::start(&admin_path, shared.clone())?;

    let tracker = TaskTracker::new();
    for (index, address, sock) in sockets {
        let sock = sock
            .listen(1024)
            .with_context(|| format!("listener[{index}]: cannot listen on {address}"))?;
        tokio::spawn(accept_loop(index, sock, shared.clone(), tracker.clone()));
    }
    tracing::info!("postern started: listening on {}", listening.join(", "));

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                // Off the signal loop: SIGTERM must work while a reload
                // compiles plugins or waits for one's check-config.
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = shared.reload().await {
                        tracing::error!("reload failed, the old generation keeps serving: {e:#}");
                    }
                });
            }
        }
    }

    tracing::info!(
        "stopping: draining {} sessions (grace {})",
        shared.limits.total(),
        humantime::format_duration(grace)
    );
    let _ = shutdown_tx.send(true);
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            "{} sessions still open after the grace period; closing them",
            shared.limits.total()
        );
    }
    // Every session is done: deliver what the journal holds.
    let _ = tokio::task::spawn_blocking(move || journaled.close()).await;
    if tokio::time::timeout(grace, delivery).await.is_err() {
        tracing::warn!(
            "deliveries still running after the grace period; they will be retried on the next start"
        );
    }
    let _ = std::fs::remove_file(&admin_path);
    tracing::info!("postern stopped");
    Ok(())
}

async fn accept_loop(index: usize, sock: TcpListener, shared: Arc<Shared>, tracker: TaskTracker) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            res = sock.accept() => res,
            _ = shutdown.changed() => return,
        };
        let (mut stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::error!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // ::ffff:192.0.2.1 is 192.0.2.1, for the limits and everything
        // after them (Connection::serve relies on it).
        let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let current = shared.generation.load_full();
        let smtp = &current.config.smtp;
        let client = client_key(peer.ip(), smtp.ipv6_client_prefix);
        match shared
            .limits
            .acquire(client, smtp.max_connections, smtp.max_connections_per_ip)
        {
            Ok(slot) => {
                let shared = shared.clone();
                tracker.spawn(async move {
                    // The session answers its own panics; this catches
                    // one before it has a session (the PTR lookup, the
                    // implicit TLS handshake).
                    let session = Connection::serve(stream, peer, index, current, shared);
                    if let Err(why) = contain::catch_panic(session).await {
                        tracing::error!(
                            "NOQUEUE: BUG: connection from [{}] panicked: {why}",
                            peer.ip()
                        );
                    }
                    drop(slot);
                });
            }
            Err(why) => {
                let (refusal, what) = match why {
                    Refused::Total => (reply::too_many_connections(), "max_connections"),
                    Refused::PerIp => (
                        reply::too_many_connections_from_address(),
                        "max_connections_per_ip",
                    ),
                };
                tracing::warn!("refused connection from [{}]: {what} reached", peer.ip());
                // Bounded like every write to a client: a refused client
                // that does not read must not keep a task.
                let deadline = smtp.command_timeout.0;
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(deadline, async {
                        stream.write_all(&refusal.to_bytes()).await?;
                        stream.shutdown().await
                    })
                    .await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{AuthFailures, client_key};
    use std::time::{Duration, Instant};

    #[test]
    fn auth_failures_are_counted_per_client_and_forgotten() {
        let mut f = AuthFailures::default();
        let t = Instant::now();
        let key = |s: &str| client_key(s.parse().unwrap(), 64);
        let a = key("2001:db8:1:2::1");
        let b = key("2001:db8:1:2:ffff::9");
        let other = key("2001:db8:1:3::1");
        assert_eq!(f.record(a, t), 1);
        // Another address of the same /64 is the same client.
        assert_eq!(f.record(b, t), 2);
        assert_eq!(f.recent(other, t), 0);
        let v4 = key("192.0.2.1");
        let mapped = key("::ffff:192.0.2.1");
        assert_eq!(f.record(v4, t), 1);
        assert_eq!(f.record(mapped, t), 2);
        // Ten quiet minutes later, forgotten.
        let later = t + Duration::from_secs(601);
        assert_eq!(f.recent(a, later), 0);
        assert_eq!(f.record(a, later), 1);
    }
}
