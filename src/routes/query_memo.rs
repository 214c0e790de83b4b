//! What a `GET` query string resolves to, memoized per instance: the query spec of its cache
//! key and that key's hash ([`crate::cache::query_hash`]), by the request's decoded query
//! parameters as they arrived.
//!
//! Why: a hit, near-cache hits above all, does little else than this resolution, and it is the
//! same on every request for a page: validating the parameters, writing the SQL text and its
//! parameters, serializing the canonical form and hashing it with SHA-256. Measured with
//! callgrind on a near-cache hit of `?city=Austin&state=Texas`, that was 22k of the 54k
//! instructions the handler ran per request (docs/benchmarks.md, 2026-12-07).
//!
//! Correctness: the resolution is a pure function of the parameters (the settings it reads
//! are fixed for the process), so a memoized entry can never be stale; pages and generations
//! are not memoized here, they stay the cache's business. Only requests that resolved are
//! kept (a 400 is worked out again each time) and only without a continuation token (the
//! token's seal is checked on every request, and each token is asked for about once).
//! Bounded in bytes ([`MEMO_MAX_BYTES`]), so odd query strings cannot grow it.

use std::sync::Arc;

use crate::cache::QueryHash;
use crate::store::QuerySpec;

/// Upper bound of the memo, in bytes (parameters, spec and a fixed overhead per entry): 1 MiB,
/// a few thousand distinct query strings.
pub const MEMO_MAX_BYTES: u64 = 1 << 20;
/// Bytes counted per entry beyond its strings: the map slot, the `Arc`s, the hash.
const ENTRY_OVERHEAD_BYTES: u64 = 256;
/// Bytes counted per query parameter and per SQL parameter beyond their text: the two
/// `String` (or `String` and `Value`) headers of the pair, 48–56 bytes, and two allocations'
/// bookkeeping. Without it a query string of hundreds of empty parameters weighed a few bytes
/// per parameter, and 1 MiB of weight held about 6 MB (measured by the RSS of a handler fed
/// 15,000 such query strings).
const PAIR_OVERHEAD_BYTES: usize = 96;

/// A `GET` resolved: the spec its cache key is made of, whether the query is to be pinned to
/// the partition of its filter on a miss, and the key's hash.
pub(crate) struct Resolved {
    pub(crate) key_spec: Arc<QuerySpec>,
    pub(crate) pin: bool,
    pub(crate) hash: QueryHash,
}

#[derive(Clone)]
struct ByteWeight;

impl quick_cache::Weighter<Params, Arc<Resolved>> for ByteWeight {
    fn weight(&self, key: &Params, value: &Arc<Resolved>) -> u64 {
        let pairs: usize = key
            .iter()
            .map(|(n, v)| n.len() + v.len() + PAIR_OVERHEAD_BYTES)
            .sum();
        let spec = &value.key_spec;
        let params: usize = spec
            .parameters
            .iter()
            .map(|(n, v)| n.len() + v.as_str().map_or(16, str::len) + PAIR_OVERHEAD_BYTES)
            .sum();
        (pairs + spec.text.len() + params) as u64 + ENTRY_OVERHEAD_BYTES
    }
}

/// A `GET`'s query parameters in arrival order.
type Params = Vec<(String, String)>;

/// The memo of resolved `GET` query strings; see the module docs. Cheap to clone (shared).
#[derive(Clone)]
pub struct QueryMemo(Arc<quick_cache::sync::Cache<Params, Arc<Resolved>, ByteWeight>>);

impl Default for QueryMemo {
    fn default() -> Self {
        Self::new(MEMO_MAX_BYTES)
    }
}

impl QueryMemo {
    /// A memo holding at most `max_bytes` (see [`MEMO_MAX_BYTES`] for what is counted).
    pub fn new(max_bytes: u64) -> Self {
        // Sizes the index only: assume ~300 bytes per entry.
        let estimated = (max_bytes / 300).clamp(16, 1 << 16) as usize;
        Self(Arc::new(quick_cache::sync::Cache::with_weighter(
            estimated, max_bytes, ByteWeight,
        )))
    }

    /// What `query` (a `GET`'s parameters in arrival order) resolved to before, if kept.
    pub(crate) fn get(&self, query: &[(String, String)]) -> Option<Arc<Resolved>> {
        self.0.get(query)
    }

    /// Keeps what `query` resolved to.
    pub(crate) fn insert(&self, query: &[(String, String)], resolved: Arc<Resolved>) {
        self.0.insert(query.to_vec(), resolved);
    }

    /// Bytes held, as counted against the bound.
    pub fn weight(&self) -> u64 {
        self.0.weight()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the memo holds nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::query_hash;
    use crate::routes::query_spec::spec_from_query_string;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn resolved(query: &[(String, String)]) -> Arc<Resolved> {
        let spec = spec_from_query_string(query).expect("valid");
        Arc::new(Resolved {
            hash: query_hash(&spec),
            key_spec: Arc::new(spec),
            pin: true,
        })
    }

    #[test]
    fn keeps_by_parameters_as_they_arrived() {
        let memo = QueryMemo::default();
        let austin = pairs(&[("city", "Austin"), ("state", "Texas")]);
        memo.insert(&austin, resolved(&austin));
        let got = memo.get(&austin).expect("kept");
        assert_eq!(got.key_spec.parameters.len(), 2);
        assert_eq!(got.hash, query_hash(&got.key_spec));
        // Another order, value or name is another entry.
        assert!(
            memo.get(&pairs(&[("state", "Texas"), ("city", "Austin")]))
                .is_none()
        );
        assert!(
            memo.get(&pairs(&[("city", "Austin"), ("state", "Ohio")]))
                .is_none()
        );
        assert!(memo.get(&pairs(&[("city", "Austin")])).is_none());
    }

    #[test]
    fn holds_no_more_than_its_bound() {
        let memo = QueryMemo::new(64 << 10);
        for i in 0..5_000 {
            let q = pairs(&[("city", &format!("city-{i}")), ("state", "Texas")]);
            memo.insert(&q, resolved(&q));
        }
        assert!(memo.weight() <= 64 << 10, "{} bytes", memo.weight());
        // Each entry weighs at least its overhead and four pairs' (two query parameters, two
        // SQL parameters): at most 102 of them fit.
        assert!(
            memo.len() <= 102 && memo.len() > 50,
            "{} entries",
            memo.len()
        );
    }
}
