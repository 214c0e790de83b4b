//! Forwarding mode (§6) and proxying (§7): the client's own request on its original path,
//! answered with a plain HTTP response.

use std::borrow::Cow;

use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::Response;
use bytes::Bytes;

use super::{BODY_LIMIT, InvocationId, Named, function_and_body, json_response, run};
use crate::api::{ApiRequest, ApiResponse, query_pairs};
use crate::error::AppError;
use crate::state::AppState;

/// Forwarding/proxying mode: the client's own request (§6, §7).
pub(super) async fn forwarded(
    State(state): State<AppState>,
    Named(function): Named,
    method: Method,
    RawQuery(raw_query): RawQuery,
    InvocationId(invocation_id): InvocationId,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (function, body) = match function_and_body(function, body, BODY_LIMIT) {
        Ok(found) => found,
        Err(e) => return e.into_api_response().into_http(),
    };
    let query = match raw_query.as_deref().map(query_pairs).transpose() {
        Ok(pairs) => pairs.unwrap_or_default(),
        Err(field) => {
            return AppError::bad_request(field, "is not UTF-8 once percent-decoded")
                .into_api_response()
                .into_http();
        }
    };
    let request = ApiRequest {
        function,
        method,
        query,
        body,
        invocation_id,
    };
    let (response, _) = run(&state, &request, "forwarded").await;
    response.into_http()
}

impl ApiResponse {
    /// Renders this response for forwarding mode (and for errors outside any function).
    pub fn into_http(self) -> Response {
        let mut response = json_response(self.status, self.body.clone());
        for (name, value) in self.extra_headers() {
            let value = match value {
                Cow::Borrowed(fixed) => Ok(HeaderValue::from_static(fixed)),
                Cow::Owned(text) => HeaderValue::try_from(text),
            };
            if let Ok(v) = value {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(name), v);
            }
        }
        response
    }
}
