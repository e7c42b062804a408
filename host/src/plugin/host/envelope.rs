//! The `envelope` resource: the transaction in progress, lent to each call
//! and read field by field.

use wasmtime::component::Resource;

use crate::plugin::bindings::postern::filter::types;
use crate::plugin::input::EnvelopeData;
use crate::plugin::state::HostState;

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
