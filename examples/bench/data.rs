//! The data sets the benchmark queries: the 1,000-city CSV (read by test support, independently
//! of the code under test) and the distinct `city` + partition-key pairs of a larger set.

use std::collections::HashSet;

use serde_json::Value;
use test_support::stack::{CityRow, city_rows};

/// The CSV's rows, one per distinct `city` + `state` (a repeated pair would be a hit, not a
/// miss, in the miss measurements).
pub fn cities() -> Vec<CityRow> {
    let mut seen = HashSet::new();
    city_rows()
        .into_iter()
        .filter(|c| seen.insert((c.city.clone(), c.state.clone())))
        .collect()
}

/// The `(city, state)` query pairs of `cities`.
pub fn city_state_pairs(cities: &[CityRow]) -> Vec<(String, String)> {
    cities
        .iter()
        .map(|c| (c.city.clone(), c.state.clone()))
        .collect()
}

/// The distinct non-empty `(city, <pk_field>)` pairs of `docs`, in document order.
pub fn distinct_pairs(docs: &[Value], pk_field: &str) -> Vec<(String, String)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for d in docs {
        let c = d["city"].as_str().unwrap_or_default().to_string();
        let p = d[pk_field].as_str().unwrap_or_default().to_string();
        if !c.is_empty() && !p.is_empty() && seen.insert((c.clone(), p.clone())) {
            out.push((c, p));
        }
    }
    out
}

/// One seeded container measured by the scale rows.
pub struct Dataset {
    pub label: String,
    pub db: String,
    pub container: String,
    /// The partition-key field (`state` or `country`); its path is `/<pk_field>`.
    pub pk_field: &'static str,
    pub docs: usize,
    /// Its distinct `city` + partition-key pairs.
    pub queries: Vec<(String, String)>,
    pub seed_secs: f64,
}
