//! The `edit` interface (since 0.2.1): header edits asked for by host
//! call. They go through the same checks as an outcome's actions
//! ([`check_action`]) and join them after the call, so both paths share
//! the per-call and per-transaction limits. Needs `grants = ["edit"]`.

use crate::message::HeaderAction;
use crate::plugin::bindings::postern::filter::edit;
use crate::plugin::outcome::{EditRefused, MAX_ITEMS, OverLimit, check_action};
use crate::plugin::state::HostState;

impl HostState {
    /// Takes an edit of the current call, or refuses it; more than
    /// [`MAX_ITEMS`] in one call is a plugin failure (a guest calling in a
    /// loop must not grow the host's memory until its time runs out).
    fn edit(&mut self, action: HeaderAction) -> wasmtime::Result<Result<(), edit::EditError>> {
        if self.edits.len() >= MAX_ITEMS {
            return Err(OverLimit(format!(
                "asked for more than {MAX_ITEMS} header edits in one call"
            ))
            .into());
        }
        let entry = self.conf().map_or("?", |c| &*c.label);
        match check_action(action, entry) {
            Ok(action) => {
                self.edits.push(action);
                Ok(Ok(()))
            }
            Err(EditRefused::InvalidName) => Ok(Err(edit::EditError::InvalidName)),
            Err(EditRefused::HostOnly) => Ok(Err(edit::EditError::HostOnly)),
            Err(EditRefused::ValueTooLong(why)) => {
                let ctx = self.context.as_deref().unwrap_or("-");
                tracing::warn!("{ctx}: plugin {entry}: edit refused: {why}");
                Ok(Err(edit::EditError::ValueTooLong))
            }
        }
    }
}

impl edit::Host for HostState {
    fn add_header(
        &mut self,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), edit::EditError>> {
        self.edit(HeaderAction::Add { name, value })
    }

    fn change_header(
        &mut self,
        name: String,
        index: u32,
        value: String,
    ) -> wasmtime::Result<Result<(), edit::EditError>> {
        self.edit(HeaderAction::Change { name, index, value })
    }

    fn remove_header(
        &mut self,
        name: String,
        index: Option<u32>,
    ) -> wasmtime::Result<Result<(), edit::EditError>> {
        self.edit(HeaderAction::Remove { name, index })
    }
}
