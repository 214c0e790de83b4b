//! Azure Functions host emulator for custom handlers (test support, not product code).
//!
//! This module plays the part of the Functions host (what `func start` or Azure runs) for one
//! custom-handler app, so the tests need no Core Tools. It follows
//! the repository's `docs/custom-handler-protocol.md` ("§" references below point into it) and is checked
//! against the cases in `tests/protocol/`.
//!
//! What it does (see [`HostEmulator::start`]):
//!
//! * reads `host.json` (`customHandler`, `extensions.http.routePrefix`, `functionTimeout`) and
//!   every `<dir>/function.json` below the app root (§2.1, §2.5);
//! * applies app-setting overrides of the form `AzureFunctionsJobHost__a__b__c=value` (from
//!   [`EmulatorConfig::env`] or the process environment; `EmulatorConfig::env` wins), the way
//!   Azure/.NET configuration layers app settings over `host.json`. Example: run the same files
//!   in both wire modes with
//!   `AzureFunctionsJobHost__customHandler__enableForwardingHttpRequest=true|false`;
//! * starts the handler executable with the host's environment variables (§2.3, §3.1), logs its
//!   console output (§3.2), waits for readiness (§3.3);
//! * serves client calls on `/{routePrefix}/{route or function name}` and translates them into
//!   invocation-payload requests (§4, §5) or forwarded requests (§6), per function (§1).
//!
//! The translation steps are exposed as pure functions ([`build_invocation_payload`],
//! [`build_invocation_request`], [`payload_outcome`], [`build_forward_request`],
//! [`forward_response_to_client`], [`handler_path_value`], [`handler_uri`],
//! [`readiness_probe_request`]) so they can be checked against the cases in `tests/protocol/` without a process.
//!
//! Deliberate choices and known gaps versus the real host are listed on [`HostEmulator`].
//!
//! ## Layout (one concern per module; a client call reads top to bottom)
//! ```text
//! server            the client-facing server: route, dispatch per function, answer
//! ├─ host_config    host.json (§2.1) + AzureFunctionsJobHost__* overrides
//! ├─ functions      function.json (§2.5): bindings, the HTTP trigger
//! ├─ routing        route templates and the route table (§8)
//! ├─ request        the client request and the invocation context
//! ├─ payload_request / payload_response   invocation-payload mode (§4, §5)
//! ├─ forwarding     forwarding mode (§6)
//! ├─ client         the HTTP client towards the handler
//! ├─ process        the handler process: command, environment, console, readiness (§2.3, §3)
//! └─ change_feed    the cosmosDBTrigger: polls the change feed, invokes with each batch
//! json, error, consts, time: shared types and values
//! ```
//! The CLI (`src/main.rs`, binary `host-emulator`) serves an app folder the way `func start`
//! does; the integration tests start it in-process through [`HostEmulator::start`].

pub mod change_feed;
mod client;
mod consts;
mod error;
mod forwarding;
mod functions;
mod host_config;
mod json;
mod payload_request;
mod payload_response;
mod process;
mod request;
mod routing;
mod server;
mod time;

pub use consts::*;
pub use error::*;
pub use forwarding::*;
pub use functions::*;
pub use host_config::*;
pub use json::*;
pub use payload_request::*;
pub use payload_response::*;
pub use process::*;
pub use request::*;
pub use routing::*;
pub use server::*;
pub use time::*;
