//! A configuration generation: everything a session needs that a reload
//! may replace. A transaction runs on one generation; a session takes the
//! current one at each new transaction (MAIL), so none keeps old rules
//! for longer than a transaction.

use std::sync::Arc;

use crate::config::{Config, TlsMode};
use crate::plugin::{Chains, Runtime};
use crate::route::Router;
use crate::smtp::session::SessionConfig;

/// Per-listener settings of a generation.
#[derive(Debug)]
pub struct ListenerGen {
    /// Listener name (logs, plugins).
    pub name: String,
    /// Protocol settings for sessions on this listener.
    pub session: Arc<SessionConfig>,
    /// TLS from the first byte.
    pub implicit_tls: bool,
    /// The SMTP AUTH backend, if AUTH is offered.
    pub auth: Option<Arc<crate::sasl::Backend>>,
}

/// One generation of configuration and tables.
#[derive(Debug)]
pub struct Generation {
    /// Increases with every successful reload.
    pub id: u64,
    /// The validated config.
    pub config: Config,
    /// Routing tables.
    pub router: Arc<Router>,
    /// Same order as `config.listeners`.
    pub listeners: Vec<ListenerGen>,
    /// Plugin chains per stage.
    pub chains: Arc<Chains>,
}

impl Generation {
    /// Builds a generation from a validated config: routing tables, and
    /// every plugin loaded and checked (WIT, hooks, each entry's config).
    pub async fn build(
        config: Config,
        id: u64,
        runtime: Option<&Arc<Runtime>>,
    ) -> anyhow::Result<Generation> {
        let chains = Arc::new(Chains::build(&config, runtime).await?);
        // The routing tables' files: read off the async workers (a table
        // may be large); a line that does not parse fails the build with
        // its FILE:LINE, so a start or `check` fails and a reload keeps
        // the old generation.
        let for_router = config.clone();
        let router = tokio::task::spawn_blocking(move || Router::load(&for_router))
            .await
            .map_err(|e| anyhow::anyhow!("routing tables: {e}"))?
            .map_err(|e| anyhow::anyhow!("routing tables: {e}"))?;
        let router = Arc::new(router);
        let s = &config.smtp;
        let mut backends: std::collections::HashMap<String, Arc<crate::sasl::Backend>> =
            std::collections::HashMap::new();
        for (i, a) in config.auth.iter().enumerate() {
            // Blocking work (a probe of Dovecot of up to seconds, an
            // argon2 hash): not on a worker thread serving sessions.
            let cfg = a.clone();
            let built = tokio::task::spawn_blocking(move || crate::sasl::build_backend(&cfg))
                .await
                .map_err(|e| anyhow::anyhow!("auth[{i}] {:?}: {e}", a.name))?;
            let backend = built
                .map(|b| b.with_hostname(&config.server.hostname))
                .map_err(|e| anyhow::anyhow!("auth[{i}] {:?}: {e:#}", a.name))?;
            backends.insert(a.name.clone(), Arc::new(backend));
        }
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let auth = l.auth.as_ref().and_then(|n| backends.get(n).cloned());
            let mechanisms = auth.as_ref().map(|b| b.mechanisms()).unwrap_or_default();
            listeners.push(ListenerGen {
                name: l.name(),
                implicit_tls: l.tls == TlsMode::Implicit,
                auth,
                session: Arc::new(SessionConfig {
                    hostname: config.server.hostname.clone(),
                    max_message_size: s.max_message_size.0,
                    max_recipients: s.max_recipients,
                    helo_required: s.helo_required,
                    vrfy: s.vrfy,
                    max_errors: s.max_errors,
                    starttls: matches!(l.tls, TlsMode::May | TlsMode::Encrypt),
                    tls_required: l.tls == TlsMode::Encrypt,
                    auth_mechanisms: mechanisms,
                    // `encrypt`: nothing but EHLO, STARTTLS, NOOP, RSET
                    // and QUIT before TLS (Postfix), so no AUTH in clear.
                    auth_requires_tls: l.auth_only_with_tls || l.tls == TlsMode::Encrypt,
                    auth_required: l.auth_required,
                }),
            });
        }
        Ok(Generation {
            id,
            config,
            router,
            listeners,
            chains,
        })
    }

    /// The listener at `index`, if the generation has it.
    pub fn listener(&self, index: usize) -> Option<&ListenerGen> {
        self.listeners.get(index)
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        tracing::debug!("generation {} released", self.id);
    }
}
