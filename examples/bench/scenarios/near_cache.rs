//! Rows 11: hits from the near cache (L1, `CACHE_LOCAL_MAX_BYTES`), served without a Redis
//! round trip, next to row 1's `redis-benchmark` GET ceiling measured in the same run: the
//! Texas page and a one-document page at 16 and 50 connections, forwarded HTTP, with the
//! handler's CPU per request and how many answers its L1 counter saw.

use std::time::Duration;

use crate::Res;
use crate::load::{body_len, hit_run, timed_get};
use crate::report::{Row, f, msf, verdict};
use crate::scenarios::{Ctx, HIT_QUERY, SMALL_QUERY};
use crate::services::Handler;

/// The L1 budget of this scenario's handler (bytes).
const L1_BYTES: &str = "67108864";

/// The note under rows 11.
pub const NOTE: &str = "rows 11: the near cache (L1) on, same Redis and data as rows 2; ratios against row 1 \
     (redis-benchmark GET, 50 connections) of this run. An L1 hit is one HTTP hop (client → \
     handler) instead of two (… → Redis): the bound is the handler's own HTTP stack.";

/// Starts a handler with L1 on, warms it until the pages are served from L1, then runs wrk.
pub async fn near_cache(ctx: &Ctx, redis_rps: f64) -> Res<Vec<Row>> {
    let (http, secs) = (&ctx.http, ctx.secs);
    println!("== 11. near cache (L1), wrk {secs} s per run");
    let cfg = ctx.cfg.with(&[("CACHE_LOCAL_MAX_BYTES", L1_BYTES)]);
    let h = ctx.svc.start_handler(&cfg).await?;
    let mut rows = Vec::new();
    for (query, conns_list) in [(HIT_QUERY, &[16u32, 50][..]), (SMALL_QUERY, &[50u32][..])] {
        let url = format!("{}/api/query?{query}", h.base);
        warm_until_local(http, &url).await?;
        let len = body_len(http, &url).await?;
        for &conns in conns_list {
            let before = local_hits(&h, http).await;
            let (o, cpu) = hit_run(h.pid(), conns, secs, &url)?;
            let local = local_hits(&h, http).await - before;
            let ratio = o.rps / redis_rps;
            let target = match (query == SMALL_QUERY, conns) {
                (true, _) => verdict(ratio >= 1.0, format!("≥ 1.0 of row 1; {ratio:.2}")),
                (false, 50) => verdict(ratio >= 0.6, format!("≥ 0.60 of row 1; {ratio:.2}")),
                (false, _) => verdict(o.p99 <= 1.0, format!("p99 ≤ 1 ms; {:.2} ms", o.p99)),
            };
            rows.push(Row {
                id: "11",
                what: format!(
                    "L1 hits, forwarded HTTP, `?{query}` ({len} B body), {conns} connections"
                ),
                result: format!(
                    "{:.0} req/s; {cpu:.0} µs handler CPU/req; {local} of {} from L1{}",
                    o.rps,
                    o.requests,
                    o.errors_suffix()
                ),
                p50: msf(o.p50),
                p99: msf(o.p99),
                ratio: f(ratio, 2),
                target,
            });
        }
    }
    let local = h.diagnostics(http).await["cache"]["local"].clone();
    println!("  L1 counters: {local}");
    Ok(rows)
}

/// Reads `url` until an answer says `x-cache: hit-local` (tracking established, page in L1).
async fn warm_until_local(http: &reqwest::Client, url: &str) -> Res<()> {
    for _ in 0..200 {
        if timed_get(http, url).await.cache == "hit-local" {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!("{url}: never served from L1"))
}

async fn local_hits(h: &Handler, http: &reqwest::Client) -> u64 {
    h.diagnostics(http).await["cache"]["local"]["hits"]
        .as_u64()
        .unwrap_or(0)
}
