//! The read path: one lookup round trip (generation, page and, on a miss, the fill lease),
//! decoded into a typed [`LookupReply`]; then a hit, a miss handed to this instance's single
//! flight for the page, or a bypass.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::{FromRedisValue, ParsingError, Value};

use super::guard::Failure;
use super::keys::{self, QueryHash};
use super::lease::Lease;
use super::{Cache, Filled, Inner, Served};
use crate::api::CacheOutcome;
use crate::error::AppError;

/// The lookup script's answer ([`super::scripts::LOOKUP`]).
#[derive(Debug, PartialEq)]
enum LookupReply {
    /// `{gen, value, pttl}`: the page is stored (the value is checked for its format by the
    /// caller), with `ttl` its remaining time to live (`None`: no expiry, or not reported).
    Stored {
        generation: String,
        value: Vec<u8>,
        ttl: Option<Duration>,
    },
    /// `{gen, '', lease, moved}`: not stored; lease 1 = taken by this request, 0 = held by
    /// another instance, 2 = leases off; moved 1 = the generation was just moved because the
    /// server changed ([`super::failover`]).
    Missing {
        generation: String,
        lease: i64,
        moved: bool,
    },
}

impl FromRedisValue for LookupReply {
    fn from_redis_value(v: Value) -> Result<Self, ParsingError> {
        let Value::Array(items) = v else {
            return Err("lookup: not an array".to_string().into());
        };
        let mut items = items.into_iter();
        let generation = match items.next() {
            Some(Value::BulkString(g)) => String::from_utf8(g)?,
            // Lua numbers come back as integers when the generation was just created.
            Some(Value::Int(g)) => g.to_string(),
            _ => return Err("lookup: no generation".to_string().into()),
        };
        let value = match items.next() {
            Some(Value::BulkString(v)) => v,
            _ => return Err("lookup: no value".to_string().into()),
        };
        let lease = match items.next() {
            None => {
                return Ok(Self::Stored {
                    generation,
                    value,
                    ttl: None,
                });
            }
            // A hit's remaining TTL comes as a string, a miss's lease as a number.
            Some(Value::BulkString(pttl)) => {
                let pttl: i64 = String::from_utf8(pttl)?
                    .parse()
                    .map_err(|_| "lookup: the TTL is not a number".to_string())?;
                let ttl = u64::try_from(pttl).ok().map(Duration::from_millis);
                return Ok(Self::Stored {
                    generation,
                    value,
                    ttl,
                });
            }
            Some(Value::Int(lease)) => lease,
            Some(_) => return Err("lookup: lease is not a number".to_string().into()),
        };
        let moved = matches!(items.next(), Some(Value::Int(1)));
        Ok(Self::Missing {
            generation,
            lease,
            moved,
        })
    }
}

impl Cache {
    /// Serves the page whose key is `hash` ([`super::query_hash`] of the query's spec) from L1
    /// or Redis, or runs `fill` (the Cosmos read, producing the response body) and stores its
    /// result under the generation read *before* `fill` started.
    /// Concurrent identical misses on this instance share one `fill` (single-flight), and
    /// instances sharing the Redis take a fill lease so that one of them reads Cosmos.
    ///
    /// # Errors
    /// Whatever `fill` returns; Redis failures are never errors (they bypass).
    pub async fn get_or_fill<F, Fut>(&self, hash: QueryHash, fill: F) -> Result<Served, AppError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Filled, AppError>> + Send + 'static,
    {
        let inner = &self.inner;
        if self.invalidation_pending() {
            return Self::bypass(inner, fill).await;
        }
        // L1 first: a page this instance holds under the current epoch, with tracking live.
        let epoch = match &inner.near {
            Some((near, client)) => {
                near.ensure_tracking(client, &inner.gen_key);
                if let Some((body, escaped)) = near.get(&hash) {
                    return Ok(Served {
                        body,
                        outcome: CacheOutcome::HitLocal,
                        request_charge: None,
                        escaped: Some(escaped),
                    });
                }
                Some(near.epoch())
            }
            None => None,
        };
        // The token names this instance, so that a flight which waits for a lease taken by one of
        // its own followers (their lookups raced) knows the lease is its own.
        let token = format!("{}:{}", inner.instance_id, keys::random_generation());
        let asked = Instant::now();
        let (generation, lease) = match self.lookup(&hash, &token).await {
            Ok(LookupReply::Stored {
                generation,
                value,
                ttl,
            }) => {
                if keys::decode(&value).is_some() {
                    inner.stats.hits.fetch_add(1, Ordering::Relaxed);
                    // Serve the stored bytes as they are: no copy, no re-serialization.
                    let body = Bytes::from(value).slice(keys::VALUE_FORMAT.len()..);
                    // Kept in L1 no longer than Redis keeps it: the TTL bounds how long a
                    // write that bypassed `update` can stay hidden, with or without L1. The
                    // remaining TTL was read at some point after `asked`: counted from there,
                    // L1 lets go no later than Redis, however slow the reply was.
                    if let (Some((near, _)), Some(epoch)) = (&inner.near, epoch) {
                        let ttl = ttl.map(|t| t.saturating_sub(asked.elapsed()));
                        near.insert(&hash, &body, epoch, ttl);
                    }
                    return Ok(Served {
                        body,
                        outcome: CacheOutcome::Hit,
                        request_charge: None,
                        escaped: None,
                    });
                }
                tracing::warn!("cached value has an unknown format; treating it as a miss");
                (generation, Lease::Off)
            }
            Ok(LookupReply::Missing {
                generation,
                lease,
                moved,
            }) => {
                if moved {
                    Self::server_changed(inner);
                }
                let lease = match lease {
                    1 => Lease::Taken(token),
                    0 => Lease::HeldElsewhere,
                    _ => Lease::Off,
                };
                (generation, lease)
            }
            Err(failure) => {
                if failure != Failure::Open {
                    tracing::warn!(reason = %failure, "Redis lookup failed; answering from Cosmos (bypass)");
                }
                return Self::bypass(inner, fill).await;
            }
        };
        let key = format!("{}{}:{}", inner.entry_prefix, generation, hash);
        let served = self.fly(key, lease, fill).await?;
        // A page read from Cosmos under this generation: as current as a Redis hit, unless the
        // epoch moved meanwhile (then `insert` ignores it).
        if let (Some((near, _)), Some(epoch)) = (&inner.near, epoch)
            && served.outcome != CacheOutcome::Bypass
        {
            near.insert(&hash, &served.body, epoch, None);
        }
        Ok(served)
    }

    /// The lookup round trip ([`super::scripts::LOOKUP`], after the server check).
    async fn lookup(&self, hash: &str, token: &str) -> Result<LookupReply, Failure> {
        let inner = &self.inner;
        let lease_ms = inner.settings.fill_lease.as_millis() as u64;
        inner
            .redis
            .run(|mut conn| {
                let mut invocation = inner.lookup.key(&inner.gen_key);
                invocation
                    .key(&inner.server_key)
                    .arg(keys::random_generation())
                    .arg(&inner.entry_prefix)
                    .arg(hash)
                    .arg(lease_ms)
                    .arg(token);
                async move { invocation.invoke_async::<LookupReply>(&mut conn).await }
            })
            .await
    }

    /// Answers from Cosmos without Redis (`x-cache: bypass`).
    pub(super) async fn bypass<F, Fut>(inner: &Inner, fill: F) -> Result<Served, AppError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Filled, AppError>>,
    {
        let filled = fill().await?;
        inner.stats.bypasses.fetch_add(1, Ordering::Relaxed);
        Ok(Served {
            body: filled.body,
            outcome: CacheOutcome::Bypass,
            request_charge: Some(filled.request_charge),
            escaped: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn lookup_replies_decode_by_shape() {
        let hit = Value::Array(vec![bulk("42"), bulk("v1:{}")]);
        assert_eq!(
            LookupReply::from_redis_value(hit).expect("hit"),
            LookupReply::Stored {
                generation: "42".into(),
                value: b"v1:{}".to_vec(),
                ttl: None,
            }
        );
        let hit_with_ttl = Value::Array(vec![bulk("42"), bulk("v1:{}"), bulk("1500")]);
        assert_eq!(
            LookupReply::from_redis_value(hit_with_ttl).expect("hit"),
            LookupReply::Stored {
                generation: "42".into(),
                value: b"v1:{}".to_vec(),
                ttl: Some(Duration::from_millis(1500)),
            }
        );
        let hit_without_expiry = Value::Array(vec![bulk("42"), bulk("v1:{}"), bulk("-1")]);
        assert_eq!(
            LookupReply::from_redis_value(hit_without_expiry).expect("hit"),
            LookupReply::Stored {
                generation: "42".into(),
                value: b"v1:{}".to_vec(),
                ttl: None,
            }
        );
        let miss = Value::Array(vec![bulk("42"), bulk(""), Value::Int(1), Value::Int(1)]);
        assert_eq!(
            LookupReply::from_redis_value(miss).expect("miss"),
            LookupReply::Missing {
                generation: "42".into(),
                lease: 1,
                moved: true
            }
        );
        for bad in [
            Value::Nil,
            Value::Array(vec![]),
            Value::Array(vec![bulk("42")]),
            Value::Array(vec![bulk("42"), bulk(""), bulk("x")]),
        ] {
            assert!(LookupReply::from_redis_value(bad).is_err());
        }
    }
}
