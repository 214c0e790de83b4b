//! Rows 9: read/write mixes (0, 1, 10 and 50 % writes) offered open-loop at a fixed rate, with
//! Zipf(1) reads over the 1,000 cities, on a handler with its cache, one with the near cache (L1)
//! on as well, and one without Redis: hit rate, request units and latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cosmos_cache_handler::seed;
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use test_support::stack::CityRow;

use crate::Res;
use crate::load::{query_url, timed};
use crate::report::{Row, msf};
use crate::scenarios::Ctx;
use crate::stats::pct;

/// The note under the table that says what the RU columns of rows 9 mean.
pub const NOTE: &str = "rows 9: RU = the sum of the `x-ms-request-charge` headers the handler returned (misses, \
     bypasses, writes) / seconds. The local Cosmos server charges a flat 1 RU per request, so \
     RU/s there = Cosmos requests/s. Real Cosmos DB charges each \
     query and each write by item size and indexing: the reads (what the cache saves) and \
     the writes (which it does not) are then weighted by their own charges.";

/// Requests per second offered in every mix.
pub(crate) const RATE: f64 = 250.0;

/// Rows 9: each mix on the cached handler, then on the one without Redis, from an empty Redis.
pub async fn write_mix(ctx: &Ctx) -> Res<Vec<Row>> {
    println!("== 9. read:write mixes");
    let secs: f64 = if ctx.opts.quick { 3.0 } else { 8.0 };
    let svc = &ctx.svc;
    let on = svc.start_handler(&ctx.cfg).await?;
    let l1_bytes = super::near_cache::L1_BYTES.to_string();
    let near = svc
        .start_handler(&ctx.cfg.with(&[("CACHE_LOCAL_MAX_BYTES", &l1_bytes)]))
        .await?;
    let off = svc.start_handler(&ctx.cfg.without_redis()).await?;
    let cities = &ctx.cities;
    let zipf = zipf(cities.len(), 1.0)?;
    let mut rows = Vec::new();
    for (i, write_pct) in [0u32, 1, 10, 50].into_iter().enumerate() {
        let mut results = Vec::new();
        for (label, h) in [("cache", &on), ("cache + L1", &near), ("no cache", &off)] {
            svc.flush_redis()?;
            // Seeded per mix, so every run (and both handlers) draws the same requests.
            let mut rng = StdRng::seed_from_u64(42 + i as u64);
            let o = open_loop(&ctx.http, &h.base, secs, write_pct, cities, &zipf, &mut rng).await;
            results.push((label, o));
        }
        let none = &results[2].1;
        for (label, o) in &results {
            rows.push(Row {
                id: "9",
                what: format!(
                    "read:write {}:{}, {} ({RATE:.0} req/s offered for {secs:.0} s, Zipf(1) reads over {} cities)",
                    100 - write_pct,
                    write_pct,
                    label,
                    cities.len()
                ),
                result: format!(
                    "hit rate {:.1} %{}; {:.1} RU/s; {} reads, {} writes; write p50 {}; {:.0} req/s done{}",
                    o.hit_rate * 100.0,
                    if *label == "cache + L1" {
                        format!(" ({:.1} % from L1)", o.local_rate * 100.0)
                    } else {
                        String::new()
                    },
                    o.ru_per_s,
                    o.reads,
                    o.writes,
                    msf(o.write_p50),
                    o.achieved_rps,
                    if o.errors > 0 {
                        format!("; {} errors", o.errors)
                    } else {
                        String::new()
                    }
                ),
                p50: msf(o.read_p50),
                p99: msf(o.read_p99),
                ratio: if *label != "no cache" {
                    format!(
                        "RU/s {:.2}, read p50 {:.2} of no cache",
                        o.ru_per_s / none.ru_per_s,
                        o.read_p50 / none.read_p50
                    )
                } else {
                    "1 (reference)".into()
                },
                target: "-".into(),
            });
        }
    }
    Ok(rows)
}

/// Zipf(`s`) over ranks 0..n (rank 0 most popular): weight 1/(rank+1)^s.
pub(crate) fn zipf(n: usize, s: f64) -> Res<WeightedIndex<f64>> {
    WeightedIndex::new((1..=n).map(|k| 1.0 / (k as f64).powf(s))).map_err(|e| e.to_string())
}

/// What one mix measured.
pub(crate) struct MixOut {
    pub(crate) reads: usize,
    pub(crate) writes: usize,
    pub(crate) hit_rate: f64,
    /// Share of reads answered from the near cache (L1).
    pub(crate) local_rate: f64,
    pub(crate) read_p50: f64,
    pub(crate) read_p99: f64,
    write_p50: f64,
    ru_per_s: f64,
    achieved_rps: f64,
    errors: usize,
}

/// Offers `RATE` requests/s for `secs` (open loop: a request leaves on its tick whether or not
/// earlier ones came back; at most 256 in flight): `write_pct` % upserts of a uniformly drawn
/// city, the rest reads of a Zipf-drawn city.
pub(crate) async fn open_loop(
    http: &reqwest::Client,
    base: &str,
    secs: f64,
    write_pct: u32,
    cities: &[CityRow],
    zipf: &WeightedIndex<f64>,
    rng: &mut StdRng,
) -> MixOut {
    let n = (RATE * secs) as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let sem = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        tick.tick().await;
        let permit = sem.clone().acquire_owned().await;
        let write = rng.random_range(0..100) < write_pct;
        let req = if write {
            let c = &cities[rng.random_range(0..cities.len())];
            let doc = json!({
                "id": seed::city_id(&c.city, &c.state),
                "city": c.city,
                "state": c.state,
                "population": c.population,
                "lat": c.lat,
                "lng": c.lng,
            });
            http.post(format!("{base}/api/update"))
                .header("content-type", "application/json")
                .body(doc.to_string())
        } else {
            let c = &cities[zipf.sample(rng)];
            http.get(query_url(base, &[("city", &c.city), ("state", &c.state)]))
        };
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            (write, timed(req).await)
        }));
    }
    let (mut rl, mut wl, mut hits, mut ru, mut errors) = (Vec::new(), Vec::new(), 0, 0.0, 0);
    let mut local = 0;
    for t in tasks {
        let Ok((write, r)) = t.await else {
            continue;
        };
        errors += usize::from(!(200..300).contains(&r.status));
        ru += r.ru;
        if write {
            wl.push(r.ms);
        } else {
            hits += usize::from(r.cache == "hit" || r.cache == "hit-local");
            local += usize::from(r.cache == "hit-local");
            rl.push(r.ms);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    MixOut {
        reads: rl.len(),
        writes: wl.len(),
        hit_rate: hits as f64 / rl.len().max(1) as f64,
        local_rate: local as f64 / rl.len().max(1) as f64,
        read_p50: pct(&rl, 50.0),
        read_p99: pct(&rl, 99.0),
        write_p50: pct(&wl, 50.0),
        ru_per_s: ru / secs,
        achieved_rps: (rl.len() + wl.len()) as f64 / elapsed,
        errors,
    }
}
