//! The internal request and response that both wire adapters produce and consume
//! (see [`crate::protocol`]). Routes see only these types, so every route behaves the same
//! in invocation-payload and forwarding mode.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use axum::http::{Method, StatusCode};
use bytes::Bytes;

/// Which function was called (the folder name of its `function.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// `query/`: cache-aside read.
    Query,
    /// `update/`: write to Cosmos, then invalidate.
    Update,
}

impl Function {
    /// Looks a function up by its folder name (case-insensitive, as the host treats names).
    pub fn from_name(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("query") {
            Some(Self::Query)
        } else if name.eq_ignore_ascii_case("update") {
            Some(Self::Update)
        } else {
            None
        }
    }

    /// The folder name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::Update => "update",
        }
    }
}

/// One client HTTP request, whichever way the host delivered it.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    /// The function called.
    pub function: Function,
    /// The client's HTTP method.
    pub method: Method,
    /// Decoded query-string pairs in arrival order (the host may have comma-joined
    /// repeated keys already: protocol §4.3, §6).
    pub query: Vec<(String, String)>,
    /// The client's request body (empty when absent).
    pub body: Bytes,
    /// `X-Azure-Functions-InvocationId`, for log correlation.
    pub invocation_id: Option<String>,
}

impl ApiRequest {
    /// The first value of query parameter `name` (exact, case-sensitive match).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Whether a `query` response came from Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served from Redis.
    Hit,
    /// Served from this instance's near cache (L1), without a Redis round trip.
    HitLocal,
    /// Read from Cosmos (and stored in Redis when possible).
    Miss,
    /// Redis was unavailable or skipped: read from Cosmos, nothing stored.
    Bypass,
}

impl CacheOutcome {
    /// The `x-cache` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::HitLocal => "hit-local",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
        }
    }
}

/// One response to the client. The body is always JSON (`application/json`).
#[derive(Debug, Clone)]
pub struct ApiResponse {
    /// HTTP status for the client.
    pub status: StatusCode,
    /// JSON body bytes (UTF-8).
    pub body: Bytes,
    /// `x-cache` header, on `query` responses.
    pub cache: Option<CacheOutcome>,
    /// `x-ms-request-charge` header: Cosmos request units consumed, when Cosmos was called.
    pub request_charge: Option<f64>,
    /// `Retry-After` header in seconds.
    pub retry_after_secs: Option<u64>,
    /// `x-cache-invalidation` header on `update`: `done`, or `pending` when Redis was
    /// unreachable and the invalidation is being retried in the background.
    pub invalidation: Option<&'static str>,
    /// `Allow` header, on a 405: the methods the path accepts.
    pub allow: Option<&'static str>,
    /// The body as a JSON string, kept with a page the near cache holds, so that invocation-
    /// payload mode escapes a hot page once instead of on every hit. `None`: escaped per call.
    pub escaped: Option<EscapedBody>,
}

/// A body's form as a JSON string literal (quoted, escaped: what `Outputs.res.body` carries in
/// invocation-payload mode, protocol §5.4), computed on first use and shared by every clone.
///
/// Why: escaping a 15–25 KB page is most of the CPU an invocation-payload hit costs beyond a
/// forwarded one; a page served many times from the near cache is escaped once.
#[derive(Debug, Clone, Default)]
pub struct EscapedBody(Arc<OnceLock<Bytes>>);

impl EscapedBody {
    /// `body` as a JSON string literal, escaped on the first call. Every call must pass the
    /// same `body` (the page this value was created with). Bytes that are not UTF-8 become
    /// U+FFFD (the body is JSON text, so there are none).
    pub fn literal(&self, body: &[u8]) -> Bytes {
        self.0.get_or_init(|| escape(body)).clone()
    }
}

/// `body` as a JSON string literal (with its quotes).
pub fn escape(body: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::with_capacity(body.len() + body.len() / 8 + 2);
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, &*text);
    Bytes::from(out)
}

/// The length in bytes of [`escape`]`(body)`, without building it: `"` and `\` and the
/// control characters with a short escape take 2 bytes, other control characters 6
/// (`\u00XX`), everything else 1, plus the two quotes (serde_json's string escaping). Lets
/// the near cache count an entry's escaped form in its byte bound before the form exists.
pub fn escaped_len(body: &[u8]) -> usize {
    let lossy;
    let bytes = if std::str::from_utf8(body).is_ok() {
        body
    } else {
        lossy = String::from_utf8_lossy(body).into_owned();
        lossy.as_bytes()
    };
    2 + bytes
        .iter()
        .map(|&b| match b {
            b'"' | b'\\' | 0x08 | 0x0c | b'\n' | b'\r' | b'\t' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

impl ApiResponse {
    /// A JSON response with no extra headers.
    pub fn json(status: StatusCode, body: Bytes) -> Self {
        Self {
            status,
            body,
            cache: None,
            request_charge: None,
            retry_after_secs: None,
            invalidation: None,
            allow: None,
            escaped: None,
        }
    }

    /// The extra headers to send besides `Content-Type`, as (name, value) pairs. Fixed values
    /// (`x-cache`) are borrowed, so a cache hit's answer allocates nothing for them.
    pub fn extra_headers(&self) -> impl Iterator<Item = (&'static str, Cow<'static, str>)> {
        // An array, not a `Vec`: no allocation for the list either.
        [
            self.cache.map(|c| ("x-cache", Cow::Borrowed(c.as_str()))),
            self.request_charge
                .map(|rc| ("x-ms-request-charge", Cow::Owned(format!("{rc:.2}")))),
            self.retry_after_secs
                .map(|s| ("retry-after", Cow::Owned(s.to_string()))),
            self.invalidation
                .map(|i| ("x-cache-invalidation", Cow::Borrowed(i))),
            self.allow.map(|a| ("allow", Cow::Borrowed(a))),
        ]
        .into_iter()
        .flatten()
    }
}

/// The pairs of a raw query string (`a=1&b=St.%20Louis`), percent-decoded with `+` as a space
/// (`application/x-www-form-urlencoded`, as the Functions host reads `req.Query`).
///
/// # Errors
/// The first parameter whose name (then: the name as sent) or value (then: the decoded name)
/// is not UTF-8 once percent-decoded (`?city=%FF`): decoding it lossily would run, and cache, a
/// query for U+FFFD the client never sent.
pub fn query_pairs(raw: &str) -> Result<Vec<(String, String)>, String> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes())
        .into_owned()
        .collect();
    // Lossy decoding leaves U+FFFD where bytes were not UTF-8; a client may also send U+FFFD
    // itself (`%EF%BF%BD`): only then are the raw pairs decoded again, strictly.
    if pairs
        .iter()
        .any(|(k, v)| k.contains('\u{FFFD}') || v.contains('\u{FFFD}'))
    {
        // (`+` for a space changes nothing about UTF-8: it is not replaced here.)
        let utf8 = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .is_ok()
        };
        // `form_urlencoded` skips empty segments too: the raw parts and the pairs line up.
        let parts = raw.split('&').filter(|p| !p.is_empty());
        for (part, (decoded_name, _)) in parts.zip(&pairs) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            if !utf8(name) {
                return Err(name.to_string());
            }
            if !utf8(value) {
                return Err(decoded_name.clone());
            }
        }
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_escaped_form_reads_back_as_the_body() {
        let body = "{\"q\":\"a \\\"quoted\\\" \u{1}\u{1f} tab\t nl\n é 😀 </script>\"}";
        let slot = EscapedBody::default();
        let literal = slot.literal(body.as_bytes());
        let back: String = serde_json::from_slice(&literal).expect("a JSON string");
        assert_eq!(back, body);
        // Computed once, shared by clones.
        let clone = slot.clone();
        assert_eq!(clone.literal(b"ignored: already escaped"), literal);
        assert_eq!(escape(body.as_bytes()), literal);
    }

    #[test]
    fn escaped_len_is_the_length_escape_produces() {
        let bodies: [&[u8]; 6] = [
            b"",
            br#"{"items":[{"city":"Austin","note":"a \"b\" c\\d"}]}"#,
            "ctl \u{0}\u{1}\u{8}\u{b}\u{c}\u{1f}\t\n\r del \u{7f} é 😀".as_bytes(),
            b"invalid \xff\xfe utf-8 \xc3",
            b"\\\\\"\"",
            &[0u8; 40],
        ];
        for body in bodies {
            assert_eq!(escaped_len(body), escape(body).len(), "{body:?}");
        }
        let page = include_bytes!("../tests/protocol/octet-stream-body-is-base64.json");
        assert_eq!(escaped_len(page), escape(page).len());
    }

    #[test]
    fn query_pairs_refuse_what_is_not_utf8_once_decoded() {
        let ok = |raw: &str| query_pairs(raw).expect(raw);
        assert_eq!(
            ok("city=St.%20Louis&state=Missouri+State"),
            [("city", "St. Louis"), ("state", "Missouri State")].map(|(k, v)| (k.into(), v.into()))
        );
        // U+FFFD sent by the client itself, and a lone `%` (kept as is), are not errors.
        assert_eq!(ok("q=%EF%BF%BD")[0].1, "\u{FFFD}");
        assert_eq!(ok("q=100%")[0].1, "100%");
        assert_eq!(ok("").len(), 0);
        for (raw, field) in [
            ("city=%FF", "city"),
            ("state=Ohio&city=%C3", "city"),
            ("n%FFme=x", "n%FFme"),
            ("a=%EF%BF%BD&b=%E2%82", "b"),
            ("flag%80", "flag%80"),
        ] {
            assert_eq!(query_pairs(raw), Err(field.to_string()), "{raw}");
        }
    }
}
