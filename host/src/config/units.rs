//! Durations (`"30s"`, `"5m"`, or seconds) and sizes (`"10M"`, or bytes) in
//! the config file.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration written as seconds or with a humantime suffix (`"1m 30s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Seconds, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"5m\", \"2h\" or a number of seconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
                u64::try_from(v)
                    .map(|s| Seconds(Duration::from_secs(s)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Seconds, E> {
                Duration::try_from_secs_f64(v)
                    .map(Seconds)
                    .map_err(|_| E::custom("a duration must be finite and not negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Seconds, E> {
                humantime::parse_duration(v)
                    .map(Seconds)
                    .map_err(|e| E::custom(format!("bad duration {v:?}: {e}")))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// A size in bytes, written as a number or with a binary suffix (`"10M"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl Bytes {
    /// Parses `"512"`, `"64k"`, `"10M"`, `"1G"` (powers of 1024).
    pub fn parse(s: &str) -> Option<Bytes> {
        let s = s.trim();
        let (num, mult) = match s.char_indices().last()? {
            (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
            (i, 'm' | 'M') => (&s[..i], 1 << 20),
            (i, 'g' | 'G') => (&s[..i], 1 << 30),
            _ => (s, 1),
        };
        num.trim().parse::<u64>().ok()?.checked_mul(mult).map(Bytes)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 10240000, \"64k\" or \"10M\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Bytes, E> {
                u64::try_from(v)
                    .map(Bytes)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes, E> {
                Bytes::parse(v).ok_or_else(|| E::custom(format!("bad size {v:?}")))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(Bytes::parse("10M"), Some(Bytes(10 << 20)));
        assert_eq!(Bytes::parse("64k"), Some(Bytes(65536)));
        assert_eq!(Bytes::parse("123"), Some(Bytes(123)));
        assert_eq!(Bytes::parse("x"), None);
        assert_eq!(Bytes::parse(""), None);
    }
}
