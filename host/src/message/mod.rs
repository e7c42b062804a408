//! The message content: header parsing for plugins and for the checks at
//! the end of DATA, and the header edits made when the message is queued.

mod edit;
mod header;
pub mod limits;

pub use edit::{Edited, HOST_ONLY_FIELDS, HeaderAction, Inspection, edit, inspect};
pub use header::{
    HeaderField, field_value, header_field, parse_headers, parse_headers_up_to, sanitize_value,
    scan_headers, valid_header_name,
};

#[cfg(test)]
mod tests;
