//! When a query has more pages: read from the SDK's own continuation token, not from the
//! page's headers.

use serde_json::Value;

/// The continuation to hand out after a page: `None` once the SDK's pipeline is drained.
///
/// Why not the page's `x-ms-continuation` header: the SDK plans ORDER BY, TOP, OFFSET/LIMIT,
/// aggregates and DISTINCT across partitions on the client, and those pages carry no server
/// header although more pages remain (cf. Azure/azure-sdk-for-js#12308). The SDK's own token
/// (`c1.` + base64url JSON, `azure_data_cosmos_driver` 1.0.0 `models/continuation_token.rs`)
/// records the whole pipeline; its root is `{"kind":"drained"}` when nothing is left.
/// A token in any other form (an opaque server token) means more pages.
pub(super) fn next_page_token(sdk_token: &str) -> Option<String> {
    (!sdk_token_is_drained(sdk_token)).then(|| sdk_token.to_string())
}

fn sdk_token_is_drained(sdk_token: &str) -> bool {
    use base64::Engine as _;
    let Some(body) = sdk_token.strip_prefix("c1.") else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .ok()
        .and_then(|json| serde_json::from_slice::<Value>(&json).ok())
        .is_some_and(|state| state.pointer("/root/kind") == Some(&Value::from("drained")))
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    fn token(json: &str) -> String {
        format!(
            "c1.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    #[test]
    fn only_a_drained_pipeline_ends_the_paging() {
        let drained = token(r#"{"op":"Query","rid":"r","root":{"kind":"drained"}}"#);
        assert_eq!(next_page_token(&drained), None);
        let ordered = token(
            r#"{"op":"Query","rid":"r","root":{"kind":"sequential_drain","left_most_undrained_epk":"05C1"}}"#,
        );
        assert_eq!(next_page_token(&ordered).as_deref(), Some(ordered.as_str()));
        // An opaque server token, or a c1 token that does not decode, means "more".
        assert!(next_page_token("+RID:~abc#RT:1").is_some());
        assert!(next_page_token("c1.@@@").is_some());
    }
}
