//! Continuation tokens bound to the query that produced them.
//!
//! A Cosmos continuation token only means something for the query, the partition scope and the
//! container it came from; the SDK resumes whatever it is given, so a token from page 1 of
//! `state=California` sent with `state=Ohio` silently skipped Ohio's first rows, and a garbage
//! token was run (and cached) as page 1. Every token the handler hands out is therefore
//!
//! ```text
//! b1.<binding: 32 hex>.<the SDK's token>
//! ```
//!
//! where the binding is the first 16 bytes of SHA-256 over the container's scope
//! (`account/database/container`), the query text, its parameters, its partition key and the
//! SDK token. A token whose binding does not match the request it comes with is a 400 naming
//! `continuation`, before the cache or Cosmos is asked.
//!
//! The page size is deliberately not bound: Cosmos lets a client change `maxItemCount`
//! between pages. The binding is an integrity check against mistakes and tampering, not a
//! secret: a client forging one can only resume its own query elsewhere in a container it can
//! already read.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cache::keys::hex;
use crate::error::AppError;
use crate::store::QuerySpec;

/// Version prefix of the tokens this handler issues.
const PREFIX: &str = "b1.";
/// Hex characters of the binding (16 bytes of SHA-256).
const BINDING_HEX: usize = 32;

/// Seals SDK continuation tokens to their query and opens them again. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBinder {
    /// Shared, not copied: the binder is cloned with the state on every request.
    scope: std::sync::Arc<str>,
}

impl TokenBinder {
    /// A binder for one container; `scope` is [`crate::config::CosmosSettings::scope`]
    /// (`<account host>/<database>/<container>`), so a token from another container or
    /// account is refused.
    pub fn new(scope: impl Into<String>) -> Self {
        Self {
            scope: scope.into().into(),
        }
    }

    /// The token handed to the client for the page after `spec`: `b1.<binding>.<sdk_token>`.
    /// `spec.continuation` and `spec.max_item_count` are not part of the binding.
    pub fn seal(&self, spec: &QuerySpec, sdk_token: &str) -> String {
        format!("{PREFIX}{}.{sdk_token}", self.binding(spec, sdk_token))
    }

    /// The SDK token inside `token`, if `token` was sealed for `spec`'s query.
    ///
    /// # Errors
    /// `BadRequest` on field `continuation` when the token is not one of this handler's, was
    /// altered, or belongs to another query, partition key or container.
    pub fn open(&self, spec: &QuerySpec, token: &str) -> Result<String, AppError> {
        let refused = || {
            AppError::bad_request(
                "continuation",
                "is not a continuation token of this query: send the `continuation` of the \
                 previous page unchanged, with the same query, parameters and partition key",
            )
        };
        let rest = token.strip_prefix(PREFIX).ok_or_else(refused)?;
        let (binding, sdk_token) = rest.split_once('.').ok_or_else(refused)?;
        if binding.len() != BINDING_HEX || sdk_token.is_empty() {
            return Err(refused());
        }
        if binding != self.binding(spec, sdk_token) {
            return Err(refused());
        }
        Ok(sdk_token.to_string())
    }

    fn binding(&self, spec: &QuerySpec, sdk_token: &str) -> String {
        #[derive(Serialize)]
        struct Bound<'a> {
            scope: &'a str,
            query: &'a str,
            parameters: &'a [(String, serde_json::Value)],
            partition_key: Option<serde_json::Value>,
            token: &'a str,
        }
        let bound = Bound {
            scope: &self.scope,
            query: &spec.text,
            parameters: &spec.parameters,
            partition_key: spec.partition_key.as_ref().map(|k| k.to_json()),
            token: sdk_token,
        };
        // JSON keeps the fields' boundaries unambiguous; serializing these cannot fail.
        let bytes = serde_json::to_vec(&bound).unwrap_or_default();
        let digest = Sha256::digest(&bytes);
        hex(&digest[..BINDING_HEX / 2])
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::store::PkValue;

    fn spec(state: &str) -> QuerySpec {
        QuerySpec {
            text: "SELECT * FROM c WHERE c[\"state\"] = @f_state".into(),
            parameters: vec![("@f_state".into(), Value::String(state.into()))],
            partition_key: None,
            max_item_count: 10,
            continuation: None,
        }
    }

    fn field(e: AppError) -> String {
        match e {
            AppError::BadRequest { field, .. } => field,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn a_token_opens_only_for_its_own_query() {
        let binder = TokenBinder::new("acct.documents.azure.com/db/c");
        let texas = spec("Texas");
        let token = binder.seal(&texas, "c1.sdk-state");
        assert!(token.starts_with("b1.") && token.ends_with(".c1.sdk-state"));
        assert_eq!(binder.open(&texas, &token).expect("opens"), "c1.sdk-state");
        // Another page size is the same query.
        let bigger = QuerySpec {
            max_item_count: 500,
            ..texas.clone()
        };
        assert!(binder.open(&bigger, &token).is_ok());
        // Another parameter value, partition key, text, or container: refused.
        let pinned = QuerySpec {
            partition_key: Some(PkValue::Str("Texas".into())),
            ..texas.clone()
        };
        let other_text = QuerySpec {
            text: "SELECT c.id FROM c".into(),
            ..texas.clone()
        };
        for other in [spec("Ohio"), pinned, other_text] {
            assert_eq!(
                field(binder.open(&other, &token).expect_err("bound")),
                "continuation"
            );
        }
        let elsewhere = TokenBinder::new("other.documents.azure.com/db/c");
        assert!(elsewhere.open(&texas, &token).is_err());
    }

    #[test]
    fn garbage_and_tampering_are_refused() {
        let binder = TokenBinder::new("a/db/c");
        let texas = spec("Texas");
        let token = binder.seal(&texas, "c1.sdk-state");
        let tampered = token.replace("sdk-state", "sdk-statf");
        for bad in [
            "garbage",
            "b1.",
            "b1.abc.c1.x",
            "c1.sdk-state",
            tampered.as_str(),
            &token[..token.len() - 1],
        ] {
            assert_eq!(
                field(binder.open(&texas, bad).expect_err(bad)),
                "continuation"
            );
        }
    }
}
