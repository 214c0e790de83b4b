//! Whether a failed write may still have changed the container: the one fact that decides
//! whether `update` must invalidate after an error.
//!
//! Why it matters: invalidating after a write that never reached Cosmos DB costs every cached
//! page of the container, and during a Cosmos outage those pages are all the handler can
//! serve (a miss is a 503 then). Why it is subtle: the SDK retries a write, on another
//! connection or in another region, after a transport error even when the first attempt may
//! have been sent (`allows_ambiguous_outcome_retry` is true for upserts and deletes in
//! `azure_data_cosmos_driver` 1.0.0), so the last error alone says nothing about the
//! attempts before it. The operation's diagnostics record every attempt, and the SDK itself
//! decides "not applied" the same way before it replays a tracked PATCH
//! (`driver/pipeline/patch_handler.rs`: every request `definitely_not_sent`).

use azure_data_cosmos::CosmosError;

/// Wire statuses with which Cosmos DB refuses a write before applying it: 400 (bad request),
/// 404 (no such document or container), 409 (conflict), 412 (precondition failed), 413
/// (entity too large), 429 (request rate too large; "the request was not executed"), from the
/// Cosmos DB REST API's status codes.
const REFUSED_BEFORE_APPLYING: [u16; 6] = [400, 404, 409, 412, 413, 429];

/// `false` only when every attempt of the failed write provably left the container unchanged:
/// the SDK recorded at least one attempt, and each one (with every transport retry inside it)
/// either never left this process (connection refused, DNS failure: `RequestSentStatus::
/// NotSent`) or was refused by Cosmos with a status from [`REFUSED_BEFORE_APPLYING`].
/// `true` in every other case, among them a timeout after sending and an error without
/// diagnostics: when in doubt, the caller invalidates (a stale read is worse than a miss).
///
/// A delete answered 404 is the case that shows why: when an earlier attempt was sent and
/// timed out, it may have deleted the document, and the SDK's retry then finds nothing.
pub(super) fn may_have_been_applied(e: &CosmosError) -> bool {
    let Some(diagnostics) = e.diagnostics() else {
        return true;
    };
    let requests = diagnostics.requests();
    if requests.is_empty() {
        return true;
    }
    !requests.iter().all(|r| {
        let retries_unsent = r
            .failed_transport_shards()
            .iter()
            .all(|s| s.request_sent().definitely_not_sent());
        // A record with Cosmos's answer: sent, no transport error, no timeout.
        let refused = r.request_sent().definitely_sent()
            && r.error().is_none()
            && !r.timed_out()
            && REFUSED_BEFORE_APPLYING.contains(&u16::from(r.status().status_code()));
        retries_unsent && (r.request_sent().definitely_not_sent() || refused)
    })
}
