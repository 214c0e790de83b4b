//! Rows 3: misses through the handler against the bare SDK call on the same queries, and the
//! breakdown of the difference (no fill lease, no Redis, one HTTP round trip alone).

use std::time::Instant;

use cosmos_cache_handler::store::{CosmosStore, Store};

use crate::Res;
use crate::data::city_state_pairs;
use crate::load::{city_spec, query_url, timed_get};
use crate::report::{Row, f, msf, smsf, verdict};
use crate::scenarios::Ctx;
use crate::services::{CONTAINER, DB, Handler};
use crate::stats::{ms, pct};

/// Rows 3, 3a, 3b, 3c: N distinct `city`+`state` misses on `h`, on a handler without fill
/// lease and on one whose Redis is unreachable, interleaved with the bare SDK call.
pub async fn misses(ctx: &Ctx, h: &Handler) -> Res<Vec<Row>> {
    let n_miss = if ctx.opts.quick { 100 } else { 500 };
    println!("== 3. misses: {n_miss} distinct queries, handler vs bare SDK, interleaved");
    let store = ctx.svc.store(DB, CONTAINER)?;
    let no_lease = ctx
        .svc
        .start_handler(&ctx.cfg.with(&[("CACHE_FILL_LEASE_MS", "0")]))
        .await?;
    let no_redis = ctx.svc.start_handler(&ctx.cfg.without_redis()).await?;
    let pairs = city_state_pairs(&ctx.cities);
    let d = miss_decomposition(
        &ctx.http,
        &store,
        [&h.base, &no_lease.base, &no_redis.base],
        &pairs,
        n_miss,
    )
    .await?;
    drop((no_lease, no_redis));
    let sdk50 = pct(&d.sdk, 50.0);
    let sdk99 = pct(&d.sdk, 99.0);
    let added = pct(&d.miss, 50.0) - sdk50;
    let miss_row = |id: &'static str, what: String, v: &[f64], target: String| Row {
        id,
        what,
        result: format!(
            "{} p50, {} p99 over the SDK",
            smsf(pct(v, 50.0) - sdk50),
            smsf(pct(v, 99.0) - sdk99)
        ),
        p50: msf(pct(v, 50.0)),
        p99: msf(pct(v, 99.0)),
        ratio: f(pct(v, 50.0) / sdk50, 2),
        target,
    };
    Ok(vec![
        Row {
            id: "3",
            what: format!(
                "misses, bare `azure_data_cosmos` query (`CosmosStore::query`, in process), N={n_miss}"
            ),
            result: "reference".into(),
            p50: msf(sdk50),
            p99: msf(sdk99),
            ratio: "1 (reference)".into(),
            target: "-".into(),
        },
        miss_row(
            "3",
            format!(
                "misses through the handler, `GET /api/query?city=..&state=..`, N={n_miss}{}",
                if d.not_miss > 0 {
                    format!(" ({} were not misses)", d.not_miss)
                } else {
                    String::new()
                }
            ),
            &d.miss,
            verdict(
                added <= 0.3,
                format!("≤ +0.3 ms p50; {:+.2} ms", added - 0.3),
            ),
        ),
        miss_row(
            "3a",
            "breakdown: the same misses with `CACHE_FILL_LEASE_MS=0` (no fill lease: 2 Redis round trips fewer)".into(),
            &d.no_lease,
            "-".into(),
        ),
        miss_row(
            "3b",
            "breakdown: the same queries with Redis unreachable (`x-cache: bypass`: HTTP + handler + SDK, no Redis)".into(),
            &d.bypass,
            "-".into(),
        ),
        Row {
            id: "3c",
            what: "breakdown: one HTTP round trip to the handler alone (`GET /`, same client)".into(),
            result: "-".into(),
            p50: msf(pct(&d.ping, 50.0)),
            p99: msf(pct(&d.ping, 99.0)),
            ratio: "n/a".into(),
            target: "-".into(),
        },
    ])
}

/// Latencies (ms) of the miss breakdown, each series over the same N distinct queries.
#[derive(Default)]
struct MissBreakdown {
    sdk: Vec<f64>,
    miss: Vec<f64>,
    no_lease: Vec<f64>,
    bypass: Vec<f64>,
    ping: Vec<f64>,
    not_miss: usize,
}

/// For each of N distinct `city`+`state` queries, in a rotating order: the bare SDK call, a
/// miss on the default handler, a miss on a handler without fill lease (`maxItemCount=99`, so
/// its key differs while Cosmos does the same work), a bypass on a handler whose Redis is
/// unreachable, and a `GET /` round trip.
async fn miss_decomposition(
    http: &reqwest::Client,
    store: &CosmosStore,
    bases: [&str; 3],
    pairs: &[(String, String)],
    n: usize,
) -> Res<MissBreakdown> {
    let spec = |city: &str, pk: &str| city_spec(city, "state", pk, "/state");
    let n = n.min(pairs.len().saturating_sub(10));
    let mut out = MissBreakdown::default();
    // Warm-up on queries that are not measured.
    for (c, p) in &pairs[pairs.len() - 5..] {
        store
            .query(&spec(c, p)?)
            .await
            .map_err(|e| format!("{e:?}"))?;
        for base in bases {
            let _ = timed_get(http, &query_url(base, &[("city", c), ("state", p)])).await;
        }
    }
    for (i, (c, p)) in pairs[..n].iter().enumerate() {
        let s = spec(c, p)?;
        for k in 0..5 {
            match (i + k) % 5 {
                0 => {
                    let t = Instant::now();
                    let page = store.query(&s).await.map_err(|e| format!("{e:?}"))?;
                    out.sdk.push(ms(t.elapsed()));
                    std::hint::black_box(page);
                }
                1 => {
                    let r =
                        timed_get(http, &query_url(bases[0], &[("city", c), ("state", p)])).await;
                    out.not_miss += usize::from(r.cache != "miss");
                    out.miss.push(r.ms);
                }
                2 => {
                    let url = query_url(
                        bases[1],
                        &[("city", c), ("state", p), ("maxItemCount", "99")],
                    );
                    out.no_lease.push(timed_get(http, &url).await.ms);
                }
                3 => out.bypass.push(
                    timed_get(http, &query_url(bases[2], &[("city", c), ("state", p)]))
                        .await
                        .ms,
                ),
                _ => out
                    .ping
                    .push(timed_get(http, &format!("{}/", bases[0])).await.ms),
            }
        }
    }
    Ok(out)
}
