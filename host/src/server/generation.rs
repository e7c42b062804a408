//! A configuration generation: everything a session needs that a reload
//! may replace. Sessions hold the generation they started with.

use std::sync::Arc;

use crate::config::Config;
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
        let router = Arc::new(Router::new(&config));
        let s = &config.smtp;
        let listeners = config
            .listeners
            .iter()
            .map(|l| ListenerGen {
                name: l.name(),
                session: Arc::new(SessionConfig {
                    hostname: config.server.hostname.clone(),
                    max_message_size: s.max_message_size.0,
                    max_recipients: s.max_recipients,
                    helo_required: s.helo_required,
                    vrfy: s.vrfy,
                    max_errors: s.max_errors,
                    ..SessionConfig::default()
                }),
            })
            .collect();
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
