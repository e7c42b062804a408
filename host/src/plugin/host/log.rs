//! The `host` interface every plugin may import: log lines and the chain
//! entry's config.

use crate::plugin::bindings::postern::filter::host;
use crate::plugin::state::HostState;

/// `host.log` lines one call may write; then one line says the rest are
/// dropped. A plugin must not be able to flood the log.
const MAX_LOG_LINES: u32 = 100;

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
