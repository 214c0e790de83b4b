//! Cache keys and values: the canonical query hash, fresh generations, TTL jitter.

use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::store::QuerySpec;

/// Prefix of every stored value: the format version. A value without it (an older format, or
/// garbage) is treated as a miss and overwritten.
pub const VALUE_FORMAT: &[u8] = b"v1:";

/// SHA-256 (hex, 64 characters) of the canonical form of a query page request. The canonical
/// form is JSON, so field boundaries are unambiguous (`{"a":"1b","c":"2"}` and
/// `{"a":"1","bc":"2"}` differ); parameters are sorted by name, so their order does not matter.
pub fn query_hash(spec: &QuerySpec) -> QueryHash {
    #[derive(Serialize)]
    struct Canonical<'a> {
        q: &'a str,
        p: Params<'a>,
        k: Option<serde_json::Value>,
        n: u32,
        c: Option<&'a str>,
    }
    /// Feeds the serializer's output straight into the hash: no buffer for the canonical form.
    struct Hashing(Sha256);
    impl std::io::Write for Hashing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    /// The parameters by name: as they are when already sorted (the `GET` route builds them
    /// so), else a sorted list of references.
    enum Params<'a> {
        Sorted(&'a [(String, serde_json::Value)]),
        Resorted(Vec<(&'a str, &'a serde_json::Value)>),
    }
    impl Serialize for Params<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self {
                Self::Sorted(p) => s.collect_seq(p.iter().map(|(n, v)| (n.as_str(), v))),
                Self::Resorted(p) => p.serialize(s),
            }
        }
    }
    let p = if spec.parameters.is_sorted_by(|a, b| a.0 <= b.0) {
        Params::Sorted(&spec.parameters)
    } else {
        let mut p: Vec<_> = spec
            .parameters
            .iter()
            .map(|(n, v)| (n.as_str(), v))
            .collect();
        p.sort_by(|a, b| a.0.cmp(b.0));
        Params::Resorted(p)
    };
    let canonical = Canonical {
        q: &spec.text,
        p,
        k: spec.partition_key.as_ref().map(|k| k.to_json()),
        n: spec.max_item_count,
        c: spec.continuation.as_deref(),
    };
    let mut hashing = Hashing(Sha256::new());
    // Serializing strings, numbers and JSON values into a writer that cannot fail cannot fail.
    let _ = serde_json::to_writer(&mut hashing, &canonical);
    let mut out = [0u8; 64];
    hex_into(&hashing.0.finalize(), &mut out);
    QueryHash(out)
}

/// A [`query_hash`]: 64 lower-case hex characters, held inline so that a near-cache hit
/// allocates nothing for its key. Reads as a `&str` ([`QueryHash::as_str`], `Deref`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueryHash([u8; 64]);

impl QueryHash {
    /// The 64 hex characters.
    pub fn as_str(&self) -> &str {
        // Always ASCII hex (built above); the fallback is never taken.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::ops::Deref for QueryHash {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for QueryHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for QueryHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    hex_into(bytes, &mut out);
    // Hex digits are ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// Writes the lower-case hex of `bytes` into `out` (two digits a byte; `out` holds
/// `2 * bytes.len()` bytes, extra input or room is left alone).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
}

/// A fresh generation for a missing generation key: random in [2^32, 2^62), far from the
/// small integers an `INCR` on a missing key would produce and unlikely to meet an old one.
pub fn random_generation() -> u64 {
    (1u64 << 32) + rand::random::<u64>() % ((1u64 << 62) - (1u64 << 32))
}

/// `ttl` ± `jitter_percent` %, in milliseconds, at least 1.
pub fn jittered_ttl_ms(ttl: Duration, jitter_percent: u8) -> u64 {
    let base = ttl.as_millis() as f64;
    let spread = f64::from(jitter_percent) / 100.0;
    let unit = f64::from(rand::random::<u32>()) / f64::from(u32::MAX); // [0, 1]
    let factor = 1.0 + spread * (2.0 * unit - 1.0);
    (base * factor).round().max(1.0) as u64
}

/// `value` prefixed with [`VALUE_FORMAT`].
pub fn encode(body: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(VALUE_FORMAT.len() + body.len());
    value.extend_from_slice(VALUE_FORMAT);
    value.extend_from_slice(body);
    value
}

/// The body inside a stored value, or `None` for an unknown format. Besides the version
/// prefix, the body must look like the JSON object we store (`{...}`): a cheap check that
/// catches truncated or foreign values without parsing every hit.
pub fn decode(value: &[u8]) -> Option<&[u8]> {
    value
        .strip_prefix(VALUE_FORMAT)
        .filter(|body| body.first() == Some(&b'{') && body.last() == Some(&b'}'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::PkValue;
    use serde_json::Value;

    fn spec(params: &[(&str, &str)]) -> QuerySpec {
        QuerySpec {
            text: "SELECT * FROM c WHERE c.a = @a".into(),
            parameters: params
                .iter()
                .map(|(n, v)| (n.to_string(), Value::String(v.to_string())))
                .collect(),
            partition_key: None,
            max_item_count: 100,
            continuation: None,
        }
    }

    /// The key is SHA-256 of the canonical JSON, computed here by `sha256sum` over the text:
    /// instances of different versions sharing one Redis must agree on it (a rolling deploy
    /// keeps its hits).
    #[test]
    fn the_hash_is_sha256_of_the_canonical_json() {
        let mut texas = spec(&[("@s", "Texas")]);
        texas.text = "SELECT * FROM c WHERE c.state = @s".into();
        // {"q":"SELECT * FROM c WHERE c.state = @s","p":[["@s","Texas"]],"k":null,"n":100,"c":null}
        assert_eq!(
            query_hash(&texas).as_str(),
            "6beca7bfb97a010156923239648d1482edcb9727c33e6e9c280fa82801e0e910"
        );
    }

    #[test]
    fn keys_are_canonical_and_collision_free() {
        let a = query_hash(&spec(&[("@a", "1b"), ("@c", "2")]));
        let b = query_hash(&spec(&[("@a", "1"), ("@bc", "2")]));
        assert_ne!(a, b);
        let swapped = query_hash(&spec(&[("@c", "2"), ("@a", "1b")]));
        assert_eq!(a, swapped);
        let mut asc = spec(&[]);
        asc.text = "SELECT * FROM c ORDER BY c.x ASC".into();
        let mut desc = asc.clone();
        desc.text = "SELECT * FROM c ORDER BY c.x DESC".into();
        assert_ne!(query_hash(&asc), query_hash(&desc));
        let mut paged = asc.clone();
        paged.continuation = Some("tok".into());
        assert_ne!(query_hash(&asc), query_hash(&paged));
        let mut smaller = asc.clone();
        smaller.max_item_count = 10;
        assert_ne!(query_hash(&asc), query_hash(&smaller));
        let mut scoped = asc.clone();
        scoped.partition_key = Some(PkValue::Str("Texas".into()));
        assert_ne!(query_hash(&asc), query_hash(&scoped));
        let mut numeric = asc.clone();
        numeric.partition_key = Some(PkValue::Num(1.0));
        let mut text_one = asc.clone();
        text_one.partition_key = Some(PkValue::Str("1".into()));
        assert_ne!(query_hash(&numeric), query_hash(&text_one));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn ttl_jitter_stays_within_bounds() {
        let ttl = Duration::from_secs(300);
        let samples: Vec<u64> = (0..2000).map(|_| jittered_ttl_ms(ttl, 10)).collect();
        assert!(samples.iter().all(|&ms| (270_000..=330_000).contains(&ms)));
        let min = samples.iter().min().copied().unwrap_or_default();
        let max = samples.iter().max().copied().unwrap_or_default();
        assert!(max - min > 30_000, "jitter spreads TTLs: {min}..{max}");
        assert_eq!(jittered_ttl_ms(ttl, 0), 300_000);
    }

    #[test]
    fn generations_start_far_from_small_integers() {
        for _ in 0..1000 {
            let g = random_generation();
            assert!((1 << 32..1 << 62).contains(&g));
        }
    }

    #[test]
    fn values_carry_a_format_version() {
        assert_eq!(decode(&encode(b"{}")), Some(&b"{}"[..]));
        assert_eq!(decode(b"{}"), None);
        assert_eq!(decode(b"v0:{}"), None);
        assert_eq!(decode(b"v1:not json at all"), None);
        assert_eq!(decode(b"v1:{\"items\":["), None);
    }
}
