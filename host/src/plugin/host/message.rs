//! The `message` resource: the content at the data stage, its header
//! section parsed once per stage and its body read in chunks.

use wasmtime::component::Resource;

use crate::plugin::bindings::postern::filter::types;
use crate::plugin::input::MessageData;
use crate::plugin::outcome::OverLimit;
use crate::plugin::state::HostState;

/// Largest body chunk handed out by one `read-body` call.
const MAX_READ: usize = 1 << 20;

/// Largest piece of a header value one `header-list` or `read-header`
/// call hands out.
const MAX_PART: usize = 64 << 10;

/// `header-list` stops adding fields at this many bytes of names and
/// values (it always returns at least one field when there is one).
const MAX_LIST: usize = 1 << 20;

impl types::HostMessage for HostState {
    fn headers(&mut self, m: Resource<MessageData>) -> wasmtime::Result<Vec<types::Header>> {
        let m = &self.table.get(&m)?.0;
        Ok(m.fields()
            .map_err(OverLimit)?
            .iter()
            .map(|(name, value)| types::Header {
                name: name.clone(),
                value: value.clone(),
            })
            .collect())
    }

    fn header(&mut self, m: Resource<MessageData>, name: String) -> wasmtime::Result<Vec<String>> {
        let m = &self.table.get(&m)?.0;
        Ok(m.fields()
            .map_err(OverLimit)?
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(&name))
            .map(|(_, v)| v.clone())
            .collect())
    }

    fn header_count(&mut self, m: Resource<MessageData>) -> wasmtime::Result<u32> {
        Ok(
            u32::try_from(self.table.get(&m)?.0.fields().map_err(OverLimit)?.len())
                .unwrap_or(u32::MAX),
        )
    }

    fn header_list(
        &mut self,
        m: Resource<MessageData>,
        start: u32,
        max: u32,
        max_value: u32,
    ) -> wasmtime::Result<Vec<types::HeaderPart>> {
        let m = &self.table.get(&m)?.0;
        let max_value = (max_value as usize).min(MAX_PART);
        let mut out = Vec::new();
        let mut total = 0usize;
        for (name, value) in m
            .fields()
            .map_err(OverLimit)?
            .iter()
            .skip(start as usize)
            .take(max as usize)
        {
            let cut = floor_boundary(value, max_value);
            total += name.len() + cut;
            if !out.is_empty() && total > MAX_LIST {
                break;
            }
            out.push(types::HeaderPart {
                name: name.clone(),
                value: value[..cut].to_string(),
                size: u32::try_from(value.len()).unwrap_or(u32::MAX),
            });
        }
        Ok(out)
    }

    fn read_header(
        &mut self,
        m: Resource<MessageData>,
        index: u32,
        offset: u32,
        len: u32,
    ) -> wasmtime::Result<Vec<u8>> {
        let m = &self.table.get(&m)?.0;
        let Some((_, value)) = m.fields().map_err(OverLimit)?.get(index as usize) else {
            return Ok(Vec::new());
        };
        let value = value.as_bytes();
        let start = (offset as usize).min(value.len());
        let end = start
            .saturating_add((len as usize).min(MAX_PART))
            .min(value.len());
        Ok(value[start..end].to_vec())
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

/// The largest character boundary of `s` at or below `at`.
fn floor_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    (0..=at).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}
