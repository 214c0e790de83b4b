//! A `query` request as a [`QuerySpec`]: the `GET` query string (equality filters) and the
//! `POST` body (the Cosmos REST query shape), with the limits both share. Validation only: a
//! malformed request is a 400 naming the field before Redis or Cosmos is asked anything.

use std::fmt::Write;

use serde_json::{Map, Value};

use crate::error::AppError;
use crate::routes::is_identifier;
use crate::store::{PkValue, QuerySpec};

/// Page size when the client gives none.
pub const DEFAULT_MAX_ITEM_COUNT: u32 = 100;
/// Largest page a client may ask for.
pub const MAX_ITEM_COUNT: u32 = 1000;
/// Query parameters that are never filters.
pub const RESERVED: [&str; 4] = ["maxItemCount", "continuation", "partitionKey", "code"];

/// Most `AND`/`OR`/`NOT` a query may hold. The Cosmos SDK plans cross-partition queries by
/// recursing over the expression, on the request's thread: ~10,000 nested `NOT` overflowed a
/// 2 MiB stack and aborted the process. The handler's threads have 64 MiB; this bound keeps
/// the deepest expression far inside it, and no real filter comes near it.
pub const MAX_QUERY_OPERATORS: usize = 4_096;

/// Longest query text Cosmos DB accepts, in bytes
/// (<https://learn.microsoft.com/azure/cosmos-db/concepts-limits#sql-query-limits>).
pub const MAX_QUERY_BYTES: usize = 512 * 1024;

/// Refuses a query the SDK could not plan safely (see [`MAX_QUERY_OPERATORS`]).
pub(crate) fn check_nesting(text: &str) -> Result<(), AppError> {
    let operators = text
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| {
            ["and", "or", "not"]
                .iter()
                .any(|op| w.eq_ignore_ascii_case(op))
        })
        .count();
    if operators > MAX_QUERY_OPERATORS {
        return Err(AppError::bad_request(
            "query",
            format!(
                "has {operators} AND/OR/NOT operators; at most {MAX_QUERY_OPERATORS} are \
                 accepted (use IN (...) or ARRAY_CONTAINS(@list, c.field) for long lists)"
            ),
        ));
    }
    Ok(())
}

/// Longest partition-key value Cosmos DB accepts, in bytes
/// (<https://learn.microsoft.com/azure/cosmos-db/concepts-limits#per-item-limits>).
pub const MAX_PARTITION_KEY_BYTES: usize = 2048;

/// Prefix of a pinned GET's query text in its cache key and token binding: the same rows as
/// the POST of that text, but not the same SDK continuation tokens (see `query::handle`).
pub(crate) const GET_KEY_PREFIX: &str = "GET ";

/// Builds the query of a `GET`: filters sorted by field name, as
/// `c["<field>"] = @f_<field>` (the bracket form and the prefix keep names such as `value` or
/// `order`, which are SQL keywords, usable).
///
/// # Errors
/// `BadRequest` naming the parameter.
pub fn spec_from_query_string(query: &[(String, String)]) -> Result<QuerySpec, AppError> {
    let mut filters: Vec<(&str, &str)> = Vec::new();
    let mut max_item_count = DEFAULT_MAX_ITEM_COUNT;
    let mut continuation = None;
    let mut partition_key = None;
    for (name, value) in query {
        // The function key: the host reads it case-insensitively (`?Code=` is the key too),
        // and it must never become a filter value sent to Cosmos DB; whatever it holds.
        if name.eq_ignore_ascii_case("code") {
            continue;
        }
        // Bytes that were not UTF-8 once percent-decoded (`?city=%FF`) reach here as U+FFFD:
        // the Functions host decodes the query lossily and re-encodes what it forwards, so the
        // replacement character is all that is left of them. A filter on it would run, and
        // cache, a query the client never meant.
        if name.contains('\u{FFFD}') || value.contains('\u{FFFD}') {
            return Err(AppError::bad_request(
                name.as_str(),
                "is not UTF-8 once percent-decoded (it holds U+FFFD, the replacement character)",
            ));
        }
        match name.as_str() {
            "maxItemCount" => max_item_count = parse_max_item_count(value)?,
            "continuation" => continuation = Some(value.clone()).filter(|c| !c.is_empty()),
            "partitionKey" if value.is_empty() => {}
            "partitionKey" if value.len() > MAX_PARTITION_KEY_BYTES => {
                return Err(AppError::bad_request(
                    "partitionKey",
                    format!("is longer than {MAX_PARTITION_KEY_BYTES} bytes"),
                ));
            }
            "partitionKey" => partition_key = Some(PkValue::Str(value.clone())),
            field => {
                if field.is_empty() {
                    return Err(AppError::bad_request(
                        field,
                        "a query parameter has no name (`?=value`); filters are `<field>=<value>`",
                    ));
                }
                if !is_identifier(field) {
                    return Err(AppError::bad_request(
                        field,
                        "filter names must match [A-Za-z_][A-Za-z0-9_]*",
                    ));
                }
                if filters.iter().any(|(f, _)| *f == field) {
                    return Err(AppError::bad_request(field, "is given more than once"));
                }
                filters.push((field, value));
            }
        }
    }
    filters.sort_by(|a, b| a.0.cmp(b.0));
    // Sized once: the clauses, plus room for the query route's key prefix.
    let clauses: usize = filters.iter().map(|(f, _)| 2 * f.len() + 19).sum();
    let mut text = String::with_capacity(GET_KEY_PREFIX.len() + 15 + clauses);
    text.push_str("SELECT * FROM c");
    for (i, (field, _)) in filters.iter().enumerate() {
        text.push_str(if i == 0 { " WHERE " } else { " AND " });
        // Writing into a String cannot fail.
        let _ = write!(text, "c[\"{field}\"] = @f_{field}");
    }
    Ok(QuerySpec {
        text,
        parameters: filters
            .iter()
            .map(|(f, v)| {
                // Not `format!`, which sizes its buffer for the literal only and then grows it.
                let mut name = String::with_capacity(3 + f.len());
                name.push_str("@f_");
                name.push_str(f);
                (name, Value::String((*v).to_string()))
            })
            .collect(),
        partition_key,
        max_item_count,
        continuation,
    })
}

/// Scopes a `GET` query to one partition when it filters on the partition-key field (path
/// `/state` → parameter `@f_state`): a single-partition query costs fewer RU. A value longer
/// than a partition key can be matches nothing; it is left as a cross-partition filter.
pub fn pin_partition(spec: &mut QuerySpec, pk_path: &str) {
    let Some(field) = pk_path.strip_prefix('/').filter(|f| !f.contains('/')) else {
        return;
    };
    let name = format!("@f_{field}");
    if let Some((_, Value::String(v))) = spec.parameters.iter().find(|(n, _)| *n == name)
        && v.len() <= MAX_PARTITION_KEY_BYTES
    {
        spec.partition_key = Some(PkValue::Str(v.clone()));
    }
}

fn parse_max_item_count(value: &str) -> Result<u32, AppError> {
    match value.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_ITEM_COUNT).contains(&n) => Ok(n),
        _ => Err(max_item_count_error()),
    }
}

fn max_item_count_error() -> AppError {
    AppError::bad_request(
        "maxItemCount",
        format!("must be a whole number from 1 to {MAX_ITEM_COUNT}"),
    )
}

/// Builds the query of a `POST` from the Cosmos REST query shape.
///
/// # Errors
/// `BadRequest` naming the JSON field (`query`, `parameters[1].name`, ...).
pub fn spec_from_body(body: &[u8]) -> Result<QuerySpec, AppError> {
    let value = super::json_body(
        body,
        "a JSON object {\"query\": \"SELECT ...\", \"parameters\": [...]}",
    )?;
    let Value::Object(object) = value else {
        return Err(AppError::bad_request("body", "must be a JSON object"));
    };
    let known = [
        "query",
        "parameters",
        "partitionKey",
        "maxItemCount",
        "continuation",
    ];
    if let Some(unknown) = object.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(AppError::bad_request(
            unknown.as_str(),
            format!(
                "is not a known field (expected one of {})",
                known.join(", ")
            ),
        ));
    }
    let text = match object.get("query") {
        Some(Value::String(q)) if q.len() > MAX_QUERY_BYTES => {
            return Err(AppError::bad_request(
                "query",
                format!("is longer than Cosmos DB's {MAX_QUERY_BYTES} bytes"),
            ));
        }
        Some(Value::String(q)) if !q.trim().is_empty() => q.clone(),
        Some(_) => return Err(AppError::bad_request("query", "must be a non-empty string")),
        None => return Err(AppError::bad_request("query", "is required")),
    };
    let parameters = parse_parameters(&object)?;
    let partition_key = match object.get("partitionKey") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() > MAX_PARTITION_KEY_BYTES => {
            return Err(AppError::bad_request(
                "partitionKey",
                format!("is longer than {MAX_PARTITION_KEY_BYTES} bytes"),
            ));
        }
        Some(v) => Some(PkValue::from_json(v).ok_or_else(|| {
            AppError::bad_request("partitionKey", "must be a string, number or boolean")
        })?),
    };
    let max_item_count = match object.get("maxItemCount") {
        None | Some(Value::Null) => DEFAULT_MAX_ITEM_COUNT,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) if (1..=u64::from(MAX_ITEM_COUNT)).contains(&n) => n as u32,
            _ => return Err(max_item_count_error()),
        },
        Some(_) => return Err(max_item_count_error()),
    };
    let continuation = match object.get("continuation") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => {
            return Err(AppError::bad_request(
                "continuation",
                "must be the string from a previous response, or null",
            ));
        }
    };
    Ok(QuerySpec {
        text,
        parameters,
        partition_key,
        max_item_count,
        continuation,
    })
}

fn parse_parameters(object: &Map<String, Value>) -> Result<Vec<(String, Value)>, AppError> {
    let list = match object.get("parameters") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(AppError::bad_request(
                "parameters",
                "must be an array of {\"name\": \"@x\", \"value\": ...}",
            ));
        }
    };
    let mut parameters: Vec<(String, Value)> = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let name = match p.get("name") {
            Some(Value::String(n)) if n.strip_prefix('@').is_some_and(is_identifier) => n.clone(),
            _ => {
                return Err(AppError::bad_request(
                    format!("parameters[{i}].name"),
                    "must be a string such as \"@city\" (@ followed by [A-Za-z_][A-Za-z0-9_]*)",
                ));
            }
        };
        let Some(value) = p.get("value") else {
            return Err(AppError::bad_request(
                format!("parameters[{i}].value"),
                "is required",
            ));
        };
        if parameters.iter().any(|(n, _)| *n == name) {
            return Err(AppError::bad_request(
                format!("parameters[{i}].name"),
                "is given more than once",
            ));
        }
        parameters.push((name, value.clone()));
    }
    parameters.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(parameters)
}

#[cfg(test)]
mod tests;
