//! Invalidations that survive a Redis failover.
//!
//! # The problem
//! Azure Cache for Redis (Standard/Premium) and Azure Managed Redis with high availability
//! replicate asynchronously and fail over behind the same host name. A generation bump that the
//! primary acknowledged but the replica had not received yet is lost when the replica is
//! promoted: the promoted replica still holds the old generation *and* the pages stored under
//! it, so every instance would serve the old pages as hits until their TTL.
//!
//! # What a lagging replica does and does not have
//! It has every key the primary had up to some moment — the generation, the pages, and anything
//! else we could write next to them (a replicated "epoch" marker, a per-instance marker, even a
//! key written with `redis.set_repl(REPL_NONE)`, which still reaches the replica in the RDB of a
//! full sync). What it does not have is the *primary's identity*: a promoted replica answers
//! with a new replication id (`master_replid` in `INFO replication`; Redis generates one on
//! every promotion, `REPLICAOF NO ONE`, cluster failover or `FAILOVER`), and a primary restarted
//! without its data starts with a new one too. Nothing a handler instance remembers can stand in
//! for it: an instance that never saw the lost bump (another instance wrote it) has nothing to
//! compare with.
//!
//! # The rule
//! Next to the generation, `cc:{scope}:server` holds the replication id of the server that last
//! confirmed the generation. Every lookup and every bump reads the server's own replication id
//! **inside the same Lua script** (no extra round trip, ~2 µs of Redis CPU for `INFO
//! replication`) and compares:
//! - equal: the generation was confirmed by this very server, which acknowledged every bump it
//!   ever answered; serve as usual;
//! - different or missing: this server was promoted (or restarted, or the key was evicted) since
//!   the generation was last confirmed, so it may lack acknowledged bumps. The script moves the
//!   generation to a fresh random value (as for a lost generation key) and records its own
//!   replication id, atomically, before anything is read under it. One cache drop per failover,
//!   done by whichever instance reaches the new primary first; no instance state involved, so it
//!   holds for instances started after the failover and on a cluster, where each shard fails over
//!   on its own (the key carries the container's hash tag: same slot, same shard, same replid).
//!
//! A replica that is still attached shares its primary's replication id, so reads from it (a
//! proxy that briefly points at it) are checked against the same identity; a replica that is
//! detached or promoted has a new id and drops the cache once. No `WAIT` is needed: the bump
//! does not have to be durable, because losing it is detected. Writes therefore cost the same
//! with or without replicas (Basic tier, local runs).

/// Lua prelude shared by the lookup and bump scripts. Expects KEYS[2] = the server key and
/// defines `server` (this server's replication id) and `moved` (true when the generation was not
/// confirmed by this server). `INFO` is allowed in scripts (non-deterministic commands are fine
/// under effects replication, the only mode since Redis 7 and the default since 5).
pub(crate) const SERVER_CHECK: &str = r"
local server = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or '?'
local moved = redis.call('GET', KEYS[2]) ~= server
";

/// The key holding the replication id that last confirmed the generation of `tag`'s container.
/// Same hash tag as the generation: one slot on a cluster.
pub(crate) fn server_key(tag: &str) -> String {
    format!("cc:{tag}:server")
}
