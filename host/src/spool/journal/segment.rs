//! The journal's segment files, record by record.
//!
//! ```text
//! segment: "PSTRNJ02" salt(u64 LE) record*
//! record:  "PJRECORD" len(u64 LE) payload-crc(u32 LE) header-crc(u32 LE) payload(len)
//! ```
//!
//! A record whose message no longer needs the journal (taken by its next
//! hop, or in a synced queue file) has its magic overwritten in place with `"PJDELIVD"`
//! ([`DELIVERED_MAGIC`]), without a sync of its own: its checksums are
//! those it was written with (the header's is computed as if the magic
//! were `"PJRECORD"`). A restart then leaves it alone instead of sending
//! it again; a mark lost in a crash costs one message sent twice.
//!
//! Every record carries its own checksums (CRC-32): `payload-crc` of its
//! payload (a whole queue file, [`crate::spool::format`]) and `header-crc`
//! of the segment's salt and the record's first 24 bytes. Damage in the
//! middle of a segment costs the records it touches, not the ones after
//! it: reading resynchronises at the next record whose checksums hold.
//! The salt, random per segment, keeps a record-shaped byte string inside
//! a message from passing for a record there: its header checksum cannot
//! be made without the salt.
//!
//! Segments written before records had checksums (`v1`: records
//! `"PSTRNJ01" len(u64 LE) payload`, no segment header) are still read;
//! there, a record found by resynchronising counts only if its payload is
//! a queue file whose own checksum holds.

use std::ops::Range;

use crate::spool::format;

/// Starts a segment of this format.
const SEGMENT_MAGIC: &[u8; 8] = b"PSTRNJ02";
/// Starts every record of a `v1` segment.
const V1_MAGIC: &[u8; 8] = b"PSTRNJ01";
/// Starts every record.
const RECORD_MAGIC: &[u8; 8] = b"PJRECORD";
/// Replaces [`RECORD_MAGIC`] once the record's message is delivered.
pub(super) const DELIVERED_MAGIC: &[u8; 8] = b"PJDELIVD";
/// Magic and salt.
pub(super) const SEGMENT_HEADER: usize = 16;
/// Magic, length, payload checksum, header checksum.
const RECORD_HEADER: usize = 8 + 8 + 4 + 4;
/// Magic and length.
const V1_HEADER: usize = 16;

/// A record to append: a queue file and its CRC-32.
#[derive(Debug)]
pub struct Record {
    pub(super) payload: Vec<u8>,
    pub(super) crc: u32,
}

impl Record {
    /// A record of `payload` whose CRC-32 is already known (computed as
    /// the queue file was made: [`format::encode_tail_crc`]).
    pub fn new(payload: Vec<u8>, crc: u32) -> Record {
        debug_assert_eq!(crc, crc32fast::hash(&payload));
        Record { payload, crc }
    }

    /// A record of `payload`, checksummed here.
    pub fn from_payload(payload: Vec<u8>) -> Record {
        let crc = crc32fast::hash(&payload);
        Record { payload, crc }
    }

    /// Bytes on disk.
    pub(super) fn framed_len(&self) -> usize {
        RECORD_HEADER + self.payload.len()
    }
}

/// The first bytes of a new segment.
pub(super) fn segment_header(salt: u64) -> [u8; SEGMENT_HEADER] {
    let mut h = [0; SEGMENT_HEADER];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..].copy_from_slice(&salt.to_le_bytes());
    h
}

fn header_crc(salt: u64, head: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    h.update(head);
    h.finalize()
}

/// Appends `record`, framed for a segment salted with `salt`, to `out`.
pub(super) fn frame(salt: u64, record: &Record, out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(RECORD_MAGIC);
    out.extend_from_slice(&(record.payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&record.crc.to_le_bytes());
    let crc = header_crc(salt, &out[at..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&record.payload);
}

/// What a segment holds.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed<'a> {
    /// Its records: offset and payload.
    pub records: Vec<(usize, &'a [u8])>,
    /// Records marked delivered ([`DELIVERED_MAGIC`]): nothing to do.
    pub delivered: usize,
    /// Stretches that are no record but are followed by one: damage.
    pub damaged: Vec<Range<usize>>,
    /// What follows the last record, if it is not one: a batch whose
    /// write was cut short (never acknowledged), or damage at the end.
    pub torn: Option<Range<usize>>,
}

/// Splits a segment into records, skipping what fails its checks.
pub fn parse(bytes: &[u8]) -> Parsed<'_> {
    if bytes.len() < SEGMENT_HEADER && SEGMENT_MAGIC.starts_with(bytes) {
        // Nothing, or a header cut short: no record was ever in it.
        return Parsed::default();
    }
    match bytes.strip_prefix(SEGMENT_MAGIC) {
        Some(rest) => {
            let salt = rest
                .get(..8)
                .and_then(|s| s.try_into().ok())
                .map_or(0, u64::from_le_bytes);
            walk(
                bytes,
                SEGMENT_HEADER,
                |b, at| record_at(b, at, salt),
                &[RECORD_MAGIC, DELIVERED_MAGIC],
            )
        }
        None => walk(
            bytes,
            0,
            |b, at| v1_record_at(b, at).map(|r| (r, false)),
            &[V1_MAGIC],
        ),
    }
}

/// Reads records from `start` with `at` (offset → payload range, and
/// whether the record is marked delivered), and resynchronises after
/// damage at the nearest of `magics` where `at` finds a record.
fn walk<'a>(
    bytes: &'a [u8],
    start: usize,
    at: impl Fn(&[u8], usize) -> Option<(Range<usize>, bool)>,
    magics: &[&[u8; 8]],
) -> Parsed<'a> {
    let mut parsed = Parsed::default();
    let mut pos = start;
    let resync = |from: usize| {
        let rest = bytes.get(from + 1..).unwrap_or_default();
        magics
            .iter()
            .filter_map(|m| {
                memchr::memmem::find_iter(rest, m)
                    .map(|p| from + 1 + p)
                    .find(|&p| at(bytes, p).is_some())
            })
            .min()
    };
    while pos < bytes.len() {
        if let Some((payload, delivered)) = at(bytes, pos) {
            if delivered {
                parsed.delivered += 1;
            } else {
                parsed.records.push((pos, &bytes[payload.clone()]));
            }
            pos = payload.end;
            continue;
        }
        match resync(pos) {
            Some(next) => {
                parsed.damaged.push(pos..next);
                pos = next;
            }
            None => {
                parsed.torn = Some(pos..bytes.len());
                break;
            }
        }
    }
    parsed
}

/// The payload of the record at `at`, if its checksums hold, and whether
/// it is marked delivered.
fn record_at(bytes: &[u8], at: usize, salt: u64) -> Option<(Range<usize>, bool)> {
    let head = bytes.get(at..at.checked_add(RECORD_HEADER)?)?;
    let word = |i: usize| {
        head.get(i..i + 4)
            .and_then(|w| w.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let delivered = match &head[..8] {
        m if m == RECORD_MAGIC => false,
        m if m == DELIVERED_MAGIC => true,
        _ => return None,
    };
    // The header as it was framed: the delivered mark came later.
    let mut framed = [0u8; 20];
    framed[..8].copy_from_slice(RECORD_MAGIC);
    framed[8..].copy_from_slice(&head[8..20]);
    if header_crc(salt, &framed) != word(20)? {
        return None;
    }
    let len = usize::try_from(u64::from_le_bytes(head[8..16].try_into().ok()?)).ok()?;
    let start = at + RECORD_HEADER;
    let payload = start..start.checked_add(len)?;
    let body = bytes.get(payload.clone())?;
    (crc32fast::hash(body) == word(16)?).then_some((payload, delivered))
}

/// The payload of the `v1` record at `at`, if its framing fits.
fn v1_frame_at(bytes: &[u8], at: usize) -> Option<Range<usize>> {
    let head = bytes.get(at..at.checked_add(V1_HEADER)?)?;
    if &head[..8] != V1_MAGIC {
        return None;
    }
    let len = usize::try_from(u64::from_le_bytes(head[8..16].try_into().ok()?)).ok()?;
    let start = at + V1_HEADER;
    let payload = start..start.checked_add(len)?;
    bytes.get(payload.clone())?;
    Some(payload)
}

/// A `v1` record has no checksum of its own: its payload, a queue file,
/// must pass [`format::decode`], so that a magic inside a message is not
/// taken for a record.
fn v1_record_at(bytes: &[u8], at: usize) -> Option<Range<usize>> {
    let payload = v1_frame_at(bytes, at)?;
    format::decode(&bytes[payload.clone()]).ok()?;
    Some(payload)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A segment of `payloads` as the writer makes it.
    pub(crate) fn segment(salt: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = segment_header(salt).to_vec();
        for p in payloads {
            frame(salt, &Record::from_payload(p.to_vec()), &mut out);
        }
        out
    }

    fn payloads<'a>(p: &Parsed<'a>) -> Vec<&'a [u8]> {
        p.records.iter().map(|r| r.1).collect()
    }

    #[test]
    fn damage_in_the_middle_costs_only_the_record_it_hits() {
        let seg = segment(7, &[b"one", b"two", b"three", b"four"]);
        assert_eq!(
            payloads(&parse(&seg)),
            [&b"one"[..], b"two", b"three", b"four"]
        );
        // A bit flipped in the payload of "two", and another in the length
        // field of "three": both skipped, the rest read.
        let at_two = SEGMENT_HEADER + RECORD_HEADER + 3;
        let at_three = at_two + RECORD_HEADER + 3;
        let mut bad = seg.clone();
        bad[at_two + RECORD_HEADER] ^= 1;
        bad[at_three + 9] ^= 0x40;
        let p = parse(&bad);
        assert_eq!(payloads(&p), [&b"one"[..], b"four"]);
        assert_eq!(p.damaged, vec![at_two..at_three + RECORD_HEADER + 5]);
        assert_eq!(p.torn, None);
        // A batch cut short at the end.
        let mut cut = seg.clone();
        cut.extend_from_slice(&segment(7, &[b"five"])[SEGMENT_HEADER..][..10]);
        let p = parse(&cut);
        assert_eq!(payloads(&p).len(), 4);
        assert_eq!(p.torn, Some(seg.len()..cut.len()));
        // Empty, or a header cut short: nothing at all.
        assert_eq!(parse(b""), Parsed::default());
        assert_eq!(parse(&seg[..5]), Parsed::default());
    }

    #[test]
    fn a_record_marked_delivered_is_skipped_and_resynchronised_to() {
        let seg = segment(5, &[b"one", b"two", b"three"]);
        let at_two = SEGMENT_HEADER + RECORD_HEADER + 3;
        let mut marked = seg.clone();
        marked[at_two..at_two + 8].copy_from_slice(DELIVERED_MAGIC);
        let p = parse(&marked);
        assert_eq!(payloads(&p), [&b"one"[..], b"three"]);
        assert_eq!(p.delivered, 1);
        assert!(p.damaged.is_empty() && p.torn.is_none());
        // Damage in "one": reading resumes at the marked record.
        marked[SEGMENT_HEADER + RECORD_HEADER] ^= 1;
        let p = parse(&marked);
        assert_eq!(payloads(&p), [&b"three"[..]]);
        assert_eq!((p.delivered, p.damaged.len()), (1, 1));
        // A mark is no licence: a damaged marked header is damage.
        let mut bad = seg.clone();
        bad[at_two..at_two + 8].copy_from_slice(DELIVERED_MAGIC);
        bad[at_two + 9] ^= 1;
        assert_eq!(parse(&bad).delivered, 0);
    }

    #[test]
    fn a_record_inside_a_message_is_not_taken_for_one() {
        // A message whose content is a whole record framed for some salt:
        // it is found only if the salt is the segment's.
        let inner = segment(1, &[b"forged"]);
        let seg = segment(2, &[&inner[SEGMENT_HEADER..], b"after"]);
        let mut bad = seg.clone();
        // The outer record's header damaged: resync skips the forgery.
        bad[SEGMENT_HEADER + 20] ^= 1;
        assert_eq!(payloads(&parse(&bad)), [&b"after"[..]]);
    }

    #[test]
    fn v1_segments_are_read_and_resynchronised() {
        let file = |id: &str| {
            let mut env = format::tests::sample();
            env.id = id.into();
            format::encode(b"Subject: x\r\n\r\nbody\r\n", &env)
        };
        let (a, b, c) = (
            file("000000000000000A"),
            file("000000000000000B"),
            file("000000000000000C"),
        );
        let mut seg = Vec::new();
        for f in [&a, &b, &c] {
            seg.extend_from_slice(V1_MAGIC);
            seg.extend_from_slice(&(f.len() as u64).to_le_bytes());
            seg.extend_from_slice(f);
        }
        assert_eq!(payloads(&parse(&seg)), [&a[..], &b[..], &c[..]]);
        // The length of b damaged: b lost, c found.
        let mut bad = seg.clone();
        let at_b = V1_HEADER + a.len();
        bad[at_b + 8] ^= 0x01;
        bad[at_b + 15] ^= 0x10;
        let p = parse(&bad);
        assert_eq!(payloads(&p), [&a[..], &c[..]]);
        assert_eq!(p.damaged, vec![at_b..at_b + V1_HEADER + b.len()]);
    }
}
