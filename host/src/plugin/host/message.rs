//! The `message` resource: the content at the data stage, its header
//! section parsed once per stage and its body read in chunks.

use std::sync::Arc;

use wasmtime::component::Resource;

use crate::message::parse_headers_up_to;
use crate::plugin::bindings::postern::filter::types;
use crate::plugin::state::HostState;

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
