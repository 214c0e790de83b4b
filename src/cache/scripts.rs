//! The Lua scripts, one `.lua` file each, so each is read (and diffed) as Lua. Every key a
//! script touches carries the container's hash tag: one cluster slot.

/// Reads the generation (creating it with `SET NX` if missing) and the entry under it and, on a
/// miss, tries to take the page's fill lease — all in one round trip. Runs after
/// [`super::failover::SERVER_CHECK`]: when this server did not confirm the generation (a promoted
/// replica that may lack acknowledged bumps), the generation moves to ARGV[1] first.
/// KEYS[1] = generation key, KEYS[2] = server key; ARGV[1] = initial generation if missing or
/// moved, ARGV[2] = entry key prefix, ARGV[3] = query hash, ARGV[4] = lease in ms (0 = no
/// lease), ARGV[5] = lease token. Returns `{gen, value, pttl}` on a hit (pttl: the entry's remaining
/// time to live in ms as a string, `-1` for none), `{gen, '', lease, moved}` on a
/// miss with lease 1 = taken, 0 = held by another, 2 = no lease, and moved 1 when an existing
/// generation was just moved (0 when there was none to move: a new or emptied Redis). (Every
/// key touched carries the container's hash tag: one cluster slot.)
pub(super) const LOOKUP: &str = include_str!("scripts/lookup.lua");

/// Stores a page and releases our lease in one round trip. KEYS[1] = entry key, KEYS[2] = lease
/// key; ARGV[1] = value ('' = store nothing), ARGV[2] = TTL in ms, ARGV[3] = our lease token
/// ('' = none held).
pub(super) const STORE: &str = include_str!("scripts/store.lua");

/// Bumps the generation KEYS[1], first creating it from ARGV[1] when missing; atomic. (A script,
/// not MULTI/EXEC: the cluster client does not run transactions.) Runs after
/// [`super::failover::SERVER_CHECK`] (KEYS[2] = server key): on a server that did not confirm the
/// generation, it restarts from ARGV[1] instead of incrementing a value that may have missed
/// acknowledged bumps (pages stored under the next integer by readers of the old primary must
/// stay unreachable). When Redis refuses the bump (out of memory with `noeviction`, or a
/// generation that is not a number), the generation key is deleted instead — `DEL` is allowed
/// when out of memory — so every instance's next lookup re-creates it from a fresh random value
/// (or, while still out of memory, bypasses): the old entries are unreachable either way.
/// Returns `{new generation or -1 after a delete, moved (1 when an existing generation moved)}`.
pub(super) const BUMP: &str = include_str!("scripts/bump.lua");

/// A lease waiter's look: the page KEYS[1] and the lease KEYS[2]'s token ('' for none).
pub(super) const PEEK: &str = include_str!("scripts/peek.lua");

/// Prelude of the bump `update` runs ([`super::change_feed`]): records the versions (`_etag`s)
/// its writes produced in the own-writes sorted set KEYS[3] (score: Redis time in ms), drops
/// entries older than the window ARGV[2] (ms) and sets the key's expiry to the window. Runs
/// between [`super::failover::SERVER_CHECK`] and [`BUMP`], so recording and bumping are one
/// atomic step: a recorded version always means "its bump happened". ARGV[3..] = versions.
pub(super) const RECORD: &str = include_str!("scripts/record.lua");

/// Prelude of the bump the change-feed function runs ([`super::change_feed`]): when every
/// change of the batch is a version recorded by [`RECORD`] within the window, returns
/// `{0, 0, 1}` without bumping (and forgets those versions); otherwise falls through to
/// [`BUMP`] (`{gen, moved}`). KEYS[3] = own-writes set; ARGV[2] = window in ms, ARGV[3] = `1`
/// when every change carried a version (`0`: some change cannot be recognised, always bump),
/// ARGV[4..] = versions.
pub(super) const FEED_CHECK: &str = include_str!("scripts/feed_check.lua");
