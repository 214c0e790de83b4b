//! Host constants: the version the emulator claims, timeouts, limits, claim types.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use std::time::Duration;

/// Host version the emulator claims in `User-Agent: Azure-Functions-Host/{v}` and
/// `X-Azure-Functions-HostVersion` (§4.1). The host release docs/custom-handler-protocol.md describes is
/// 4.1037.0; the fourth component is a placeholder.
pub const HOST_VERSION: &str = "4.1037.0.0";

/// Readiness probe interval: `GET /` every 25 ms (§3.3, case readiness-probe).
pub const READINESS_POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Default readiness budget, `customHandler.initializationTimeout` = `00:00:30` (§3.3).
pub const DEFAULT_INITIALIZATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Default `functionTimeout` outside Consumption: 30 minutes (§9).
pub const DEFAULT_FUNCTION_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Largest client request body the emulator buffers (the host's default
/// `maxRequestBodySize` is 100 MiB). Larger bodies get 413.
pub const MAX_REQUEST_BODY_BYTES: usize = 100 * 1024 * 1024;

/// Prefix of app settings that override `host.json` keys (`__` separates path segments).
pub const HOST_OVERRIDE_PREFIX: &str = "AzureFunctionsJobHost__";

/// How long [`HostEmulator::shutdown`] waits after SIGTERM before sending SIGKILL.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub(crate) const AUTH_LEVEL_CLAIM: &str =
    "http://schemas.microsoft.com/2017/07/functions/claims/authlevel";
pub(crate) const NAME_CLAIM_TYPE: &str =
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name";
pub(crate) const ROLE_CLAIM_TYPE: &str =
    "http://schemas.microsoft.com/ws/2008/06/identity/claims/role";
pub(crate) const XML_STRING_TYPE: &str = "http://www.w3.org/2001/XMLSchema#string";

/// Characters `UrlEncoder.Default` leaves alone when the host rebuilds the query string in
/// forwarding mode (§6): ASCII letters, digits and `-._~`; everything else is `%XX` (UTF-8).
pub(crate) const QUERY_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
