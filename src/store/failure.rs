//! How an SDK error becomes a [`StoreError`]: by HTTP status, Cosmos sub-status, and whether
//! Cosmos answered (a wire response) or the SDK raised it itself.

use std::time::Duration;

use azure_data_cosmos::CosmosError;

use super::{QuerySpec, StoreError, WriteError};
use crate::config::CosmosSettings;

/// Cosmos sub-status codes the mapping needs. Numbers from `azure_data_cosmos_driver` 1.0.0
/// `src/error/status_codes.rs` (client-side, HTTP 400/500 without a wire response) and the
/// Cosmos REST sub-status table (wire).
pub(super) mod substatus {
    /// 500, client-side: a response (or token) body the SDK cannot deserialize.
    pub const BODY_UNDECODABLE: u16 = 20020;
    /// Client-side transport failures: connect, I/O, DNS, body read, timeout.
    pub const TRANSPORT: std::ops::RangeInclusive<u16> = 20010..=20015;
    /// 400, client-side: a buffered stage cannot mint a continuation token mid-way.
    pub const BUFFERED_CONTINUATION_UNSUPPORTED: u16 = 20124;
    /// 400/500, client-side: a continuation token whose state the SDK cannot resume from
    /// (another query shape, a partition layout that changed, an ORDER BY state it cannot read).
    pub const CONTINUATION_UNUSABLE: [u16; 8] =
        [20116, 20117, 20203, 20204, 20205, 20213, 20214, 20216];
    /// 400, client-side: a partition-key value the SDK refuses.
    pub const PARTITION_KEY: [u16; 5] = [20100, 20101, 20102, 20103, 20127];
    /// 401, client-side: the token credential returned no token (Entra ID).
    pub const TOKEN_ACQUISITION_FAILED: u16 = 20402;
}

pub(super) fn sub_status(e: &CosmosError) -> Option<u16> {
    e.status().sub_status().map(|s| s.value())
}

/// What a client must change when the SDK refuses a query shape before sending it (client-side
/// HTTP 400), or the gateway refuses to serve it across partitions (wire 400/1004). `None` for
/// other sub-statuses.
pub(super) fn query_refusal(sub_status: u16) -> Option<&'static str> {
    Some(match sub_status {
        20113 => {
            "the Cosmos SDK cannot run this query across partitions (a feature its query \
             planner does not support); scope it to one partition with partitionKey, or simplify it"
        }
        20114 => "TOP, OFFSET and LIMIT take a non-negative whole number",
        20115 => {
            "ORDER BY and GROUP BY across partitions must name a property path (c.population), \
             not a computed expression; scope the query with partitionKey to use an expression"
        }
        20118 => "the query fans out to more partitions than the SDK allows; give partitionKey",
        20119 => "ORDER BY across partitions cannot sort on an array or object value",
        20123 => "DISTINCT on values nested this deeply is not supported",
        20125 | 20126 => {
            "the Cosmos SDK must buffer this whole query on the client (cross-partition \
             DISTINCT, or ORDER BY without a streaming plan) and needs a bounded window: add \
             TOP n (or OFFSET/LIMIT), scope the query to one partition with partitionKey, or, \
             for DISTINCT VALUE, add ORDER BY on the same value"
        }
        1004 => {
            "Cosmos DB cannot serve this query across partitions (an aggregate or clause without \
             a cross-partition plan); scope it to one partition with partitionKey"
        }
        _ => return None,
    })
}

/// The facts of an SDK error that decide the client's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Failure {
    pub(super) status: u16,
    pub(super) sub_status: Option<u16>,
    /// Cosmos answered (a wire response), as opposed to an error raised inside the SDK.
    pub(super) from_wire: bool,
    pub(super) retry_after_ms: Option<u64>,
}

impl Failure {
    pub(super) fn of(e: &CosmosError) -> Self {
        Self {
            status: u16::from(e.status().status_code()),
            sub_status: sub_status(e),
            from_wire: e.is_from_wire(),
            retry_after_ms: e.response().and_then(|r| r.headers().retry_after_ms),
        }
    }

    /// The answer for a failure no operation-specific rule claimed.
    ///
    /// 503 only where retrying later can help (throttling, transport, a Cosmos 503/408/410);
    /// 502 where Cosmos answered something the handler cannot use (a 5xx, an undecodable body);
    /// 500 for a fault inside the handler or the SDK.
    pub(super) fn classify(self) -> StoreError {
        let Self {
            status,
            sub_status,
            from_wire,
            retry_after_ms,
        } = self;
        if status == 429 {
            let wait = retry_after_ms.map_or(Duration::from_secs(1), Duration::from_millis);
            return StoreError::Throttled {
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            };
        }
        if !from_wire && sub_status == Some(substatus::TOKEN_ACQUISITION_FAILED) {
            return StoreError::Unavailable(
                "no Microsoft Entra ID token for Cosmos DB: the identity endpoint (or the Azure \
                 CLI) has not issued one; the handler keeps retrying"
                    .into(),
            );
        }
        if status == 401 || status == 403 {
            // `CosmosStore` replaces the message with one naming the configured settings.
            return StoreError::CredentialsRefused {
                status,
                message: format!(
                    "Cosmos DB refused the handler's credentials (HTTP {status}): check the \
                     account key or the identity's data-plane role"
                ),
            };
        }
        if !from_wire && sub_status == Some(substatus::BODY_UNDECODABLE) {
            return StoreError::BadGateway(
                "Cosmos DB returned a document the handler cannot decode (not valid JSON for \
                 the SDK, e.g. a lone UTF-16 surrogate such as \"\\ud800\" written by a \
                 JavaScript client); fix or delete that document"
                    .into(),
            );
        }
        let transport = sub_status.is_some_and(|s| substatus::TRANSPORT.contains(&s));
        if matches!(status, 408 | 410 | 449 | 503) || (!from_wire && transport) {
            return StoreError::Unavailable("Cosmos DB is unreachable".into());
        }
        if from_wire && status >= 500 {
            return StoreError::BadGateway(format!("Cosmos DB answered HTTP {status}"));
        }
        if status == 404 {
            return StoreError::Unavailable("Cosmos DB resource not found".into());
        }
        StoreError::Internal
    }
}

/// Cosmos's own message without the status prefix the SDK's `Display` adds.
pub(super) fn cosmos_message(e: &CosmosError) -> String {
    let text = e.to_string();
    match text.split_once(": ") {
        Some((_, rest)) if !rest.is_empty() => rest.to_string(),
        _ => text,
    }
}

/// Maps an SDK error onto the client-facing error; logs the detail (never a key: the SDK's
/// one-line `Display` holds the status, sub-status and service message only).
pub(super) fn map_error(e: &CosmosError, operation: &'static str) -> StoreError {
    tracing::warn!(operation, error = %e, "Cosmos DB call failed");
    Failure::of(e).classify()
}

/// The container named in the settings does not exist (a 404 from Cosmos).
pub(super) fn container_missing(settings: &CosmosSettings) -> StoreError {
    StoreError::Unavailable(format!(
        "Cosmos DB container {}/{} does not exist",
        settings.database, settings.container
    ))
}

/// A failed query: the refusals the client can act on (its continuation, its partition key,
/// a shape Cosmos will not run) keep a 400 with the fix in words; the rest as [`map_error`].
pub(super) fn query_error(
    settings: &CosmosSettings,
    e: &CosmosError,
    spec: &QuerySpec,
) -> StoreError {
    let failure = Failure::of(e);
    if let Some(sub) = failure.sub_status {
        if spec.continuation.is_some() && substatus::CONTINUATION_UNUSABLE.contains(&sub) {
            tracing::warn!(error = %e, "unusable continuation token");
            return StoreError::input(
                "continuation",
                "can no longer resume this query (the container's partitions changed, or \
                 the token is from another query); start again without continuation",
            );
        }
        if substatus::PARTITION_KEY.contains(&sub) && !failure.from_wire {
            return StoreError::input("partitionKey", cosmos_message(e));
        }
        if failure.status == 400
            && let Some(reason) = query_refusal(sub)
        {
            tracing::info!(error = %e, "query refused");
            return StoreError::Query(reason.into());
        }
    }
    if spec.continuation.is_some()
        && failure.status == 400
        && cosmos_message(e)
            .to_ascii_lowercase()
            .contains("continuation")
    {
        tracing::warn!(error = %e, "continuation token refused");
        return StoreError::input(
            "continuation",
            "is not a continuation token of this query (use the `continuation` of the previous page, unchanged)",
        );
    }
    if failure.status == 400 && (failure.from_wire || failure.sub_status.is_none()) {
        let message = cosmos_message(e);
        // A server without a cross-partition plan for this query (the local emulator, for
        // aggregates) asks for a request header the client cannot set: say what it can do.
        if message.contains("enablecrosspartition") {
            return StoreError::Query(
                "Cosmos DB cannot run this query across partitions here (an aggregate \
                 without a cross-partition plan): scope it to one partition with partitionKey"
                    .into(),
            );
        }
        return StoreError::Query(message);
    }
    if failure.status == 404 && failure.from_wire {
        return container_missing(settings);
    }
    map_error(e, "query")
}

/// A failed write: Cosmos refusals the client can act on keep their status, the rest as
/// [`map_error`]; with whether it may have been applied (`applied.rs`).
pub(super) fn write_error(
    settings: &CosmosSettings,
    e: &CosmosError,
    operation: &'static str,
) -> WriteError {
    WriteError {
        error: write_failure(settings, e, operation),
        maybe_applied: super::applied::may_have_been_applied(e),
    }
}

fn write_failure(
    settings: &CosmosSettings,
    e: &CosmosError,
    operation: &'static str,
) -> StoreError {
    let status = e.status();
    let code = u16::from(status.status_code());
    if e.is_from_wire() && matches!(code, 400 | 409 | 412 | 413) {
        tracing::warn!(operation, error = %e, "Cosmos DB refused the write");
        return StoreError::Refused {
            status: code,
            message: cosmos_message(e),
        };
    }
    if status.is_not_found() && e.is_from_wire() {
        return container_missing(settings);
    }
    map_error(e, operation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(status: u16, sub_status: Option<u16>, from_wire: bool) -> Failure {
        Failure {
            status,
            sub_status,
            from_wire,
            retry_after_ms: None,
        }
    }

    #[test]
    fn each_failure_class_has_its_own_answer() {
        let cases = [
            // (status, sub-status, from the wire) -> (HTTP status, code)
            ((429, Some(3200), true), (503, "throttled")),
            ((401, None, true), (503, "unavailable")),
            ((403, Some(5301), true), (503, "unavailable")),
            ((500, Some(20020), false), (502, "bad_gateway")),
            ((503, Some(20010), false), (503, "unavailable")),
            ((500, Some(20013), false), (503, "unavailable")),
            ((503, None, true), (503, "unavailable")),
            ((408, None, true), (503, "unavailable")),
            ((500, None, true), (502, "bad_gateway")),
            ((502, None, true), (502, "bad_gateway")),
            ((404, Some(1003), true), (503, "unavailable")),
            ((500, Some(20207), false), (500, "internal")),
        ];
        for ((status, sub, wire), (want_status, want_code)) in cases {
            let e = crate::error::AppError::from(failure(status, sub, wire).classify());
            assert_eq!(
                (e.status().as_u16(), e.code()),
                (want_status, want_code),
                "{status}/{sub:?} wire={wire}"
            );
        }
        let throttled = Failure {
            retry_after_ms: Some(2_500),
            ..failure(429, None, true)
        };
        assert!(matches!(
            throttled.classify(),
            StoreError::Throttled {
                retry_after_secs: 3
            }
        ));
    }

    #[test]
    fn refused_query_shapes_say_what_to_change() {
        for sub in [20113, 20114, 20115, 20118, 20119, 20123, 20125, 20126, 1004] {
            let reason = query_refusal(sub).expect("a refusal");
            assert!(!reason.contains("unreachable"), "{sub}: {reason}");
        }
        assert!(query_refusal(20125).is_some_and(|r| r.contains("TOP n")));
        assert_eq!(query_refusal(20020), None);
        assert_eq!(query_refusal(20010), None);
    }
}
