//! What a Redis error says in logs and 503 bodies: its kind and code, named plainly, and the
//! settings to check when Redis refused the credentials. Never a password: the redis crate's
//! errors carry no connection parameters.

/// [`redis_reason`], plus, when Redis refused the credentials, the settings to check
/// (`entra`: the connection authenticates with Microsoft Entra ID tokens).
pub(super) fn describe(e: &redis::RedisError, entra: bool) -> String {
    let refused = e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"));
    let reason = redis_reason(e);
    match (refused, entra) {
        (false, _) => reason,
        (true, false) => format!(
            "{reason}: Redis refused the credentials of {} (a wrong or rotated password, or \
             access keys disabled: use {} and {} for Microsoft Entra ID)",
            crate::config::names::REDIS,
            crate::config::names::REDIS_IDENTITY_HOST,
            crate::config::names::REDIS_IDENTITY_PRINCIPAL
        ),
        (true, true) => format!(
            "{reason}: Redis refused the Entra ID token of {} (no valid token yet, or no \
             data access policy assignment for that object id)",
            crate::config::names::REDIS_IDENTITY_PRINCIPAL
        ),
    }
}

/// The error's kind and, for server errors, its code (never a password: the redis crate's
/// errors carry no connection parameters).
pub(super) fn redis_reason(e: &redis::RedisError) -> String {
    // The crate reports its own response timeout and a refused connect as I/O errors: name
    // them, so a black-holed Redis reads "timeout" in logs and 503 bodies, not "Io".
    if e.is_timeout() {
        return "timeout (Redis did not answer)".into();
    }
    if e.is_connection_refusal() {
        return "connection refused".into();
    }
    match e.code() {
        Some(code) => format!("{:?} ({code})", e.kind()),
        None => format!("{:?}", e.kind()),
    }
}
