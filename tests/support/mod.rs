//! Test support: the host emulator, the Cosmos-protocol server, Redis servers, the stack.
#![allow(dead_code)]

pub mod chaos_proxy;
pub mod cosmos_server;
pub mod entra_redis; // keyless (issue 11)
pub mod failover;
pub mod host_emulator;
pub mod identity; // keyless (issue 11)
pub mod keyless; // keyless (issue 11)
pub mod redis_server;
pub mod scratch;
pub mod stack;

pub use stack::{Mode, Stack};
