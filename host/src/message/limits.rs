//! Limits on a message's header section, enforced once at the end of
//! data: a content filter sees the whole header or the message is
//! refused, never a view cut short (Postfix's `header_size_limit` cuts a
//! long header silently; Sendmail refuses with `552 5.6.0 Headers too
//! large`, Exim with `552` past `header_maxsize`).

use super::scan_headers;
use crate::smtp::reply::{Reply, r};

/// The largest `smtp.max_header_size` a config may set: every plugin that
/// reads the header copies it whole (`headers()`), so this bounds what one
/// call hands a guest.
pub const MAX_HEADER_SIZE_CEILING: u64 = 1 << 20;

/// What a header section may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLimits {
    /// Header fields.
    pub fields: usize,
    /// Octets of the header section (up to and including the empty line).
    pub bytes: usize,
}

/// A header section over its limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderTooLarge {
    /// More fields than allowed.
    #[error("too many header fields ({count}, at most {max})")]
    Fields {
        /// Fields in the message.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// More octets than allowed.
    #[error("message header exceeds fixed limit ({size} bytes, at most {max})")]
    Bytes {
        /// Octets of the header section.
        size: usize,
        /// The limit.
        max: usize,
    },
}

impl HeaderTooLarge {
    /// The reply: `552 5.3.4`, like a message over the size limit.
    pub fn reply(&self) -> Reply {
        r(552, 5, 3, 4, format!("Error: {self}"))
    }
}

/// Checks the header section of `content` against `limits` (one linear
/// scan, no copy).
pub fn check_header(content: &[u8], limits: HeaderLimits) -> Result<(), HeaderTooLarge> {
    let mut count = 0usize;
    let size = scan_headers(content, |_, _| count += 1);
    check_counts(count, size, limits)
}

/// Checks a header section of `count` fields and `size` octets (counted
/// by the scan at the end of data, [`super::inspect`]) against `limits`.
pub fn check_counts(count: usize, size: usize, limits: HeaderLimits) -> Result<(), HeaderTooLarge> {
    if size > limits.bytes {
        return Err(HeaderTooLarge::Bytes {
            size,
            max: limits.bytes,
        });
    }
    if count > limits.fields {
        return Err(HeaderTooLarge::Fields {
            count,
            max: limits.fields,
        });
    }
    Ok(())
}

/// The check at the end of data, on the counts of the one header scan
/// there, with the reply and log line of a refusal: before any content
/// filter runs.
pub fn enforce(
    found: &super::Inspection,
    limits: HeaderLimits,
    id: &str,
    client: &str,
) -> Result<(), Reply> {
    check_counts(found.fields, found.header_size, limits).map_err(|e| {
        let reply = e.reply();
        tracing::info!(
            "{id}: reject: END-OF-MESSAGE from {client}: {}",
            reply.summary()
        );
        reply
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reproduction: padding fields, then the field a filter
    /// looks for.
    fn padded(padding: usize, subject: &str) -> Vec<u8> {
        let mut m = Vec::new();
        for i in 0..padding {
            m.extend_from_slice(format!("X-Pad-{i}: p\r\n").as_bytes());
        }
        m.extend_from_slice(format!("Subject: {subject}\r\n\r\nbody\r\n").as_bytes());
        m
    }

    #[test]
    fn a_header_over_its_limits_is_refused_with_552() {
        let limits = HeaderLimits {
            fields: 1000,
            bytes: 100 << 10,
        };
        assert_eq!(check_header(&padded(999, "x"), limits), Ok(()));
        let e = check_header(&padded(1000, "cheap viagra"), limits).unwrap_err();
        assert_eq!(
            e,
            HeaderTooLarge::Fields {
                count: 1001,
                max: 1000
            }
        );
        assert_eq!(
            e.reply().summary(),
            "552 5.3.4 Error: too many header fields (1001, at most 1000)"
        );
        let long = "v".repeat(100 << 10);
        let e = check_header(&padded(0, &long), limits).unwrap_err();
        assert!(
            matches!(e, HeaderTooLarge::Bytes { size, max } if size > max && max == 100 << 10),
            "{e:?}"
        );
        // The body does not count; a message without a header is fine.
        let mut m = padded(3, "s");
        m.extend(std::iter::repeat_n(b'b', 1 << 20));
        assert_eq!(check_header(&m, limits), Ok(()));
        assert_eq!(check_header(b"\r\nonly a body\r\n", limits), Ok(()));
    }
}
