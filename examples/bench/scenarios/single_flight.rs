//! Row 6: single-flight. 200 concurrent identical misses while the first Cosmos query is held
//! 300 ms: one Cosmos query should serve them all.

use std::sync::Arc;

use serde_json::json;

use crate::Res;
use crate::load::timed_get;
use crate::report::{Row, msf, verdict};
use crate::scenarios::Ctx;
use crate::services::{DB, Handler};
use crate::stats::pct;

/// Row 6 on `h`, from an empty Redis.
pub async fn single_flight(ctx: &Ctx, h: &Handler) -> Res<Vec<Row>> {
    println!("== 6. single-flight: 200 concurrent identical misses");
    let svc = &ctx.svc;
    svc.flush_redis()?;
    let before = svc.cosmos_count(DB, "queries").await;
    svc.cosmos
        .fault(json!({"kind":"query","count":1,"delayMs":300,"db":DB}))
        .await;
    let url = format!("{}/api/query?state=Ohio&maxItemCount=7", h.base);
    // All 200 requests leave together, so they overlap the held query.
    let barrier = Arc::new(tokio::sync::Barrier::new(200));
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (http, url, barrier) = (ctx.http.clone(), url.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            timed_get(&http, &url).await
        }));
    }
    let (mut misses, mut hits, mut other) = (0, 0, 0);
    let mut lat = Vec::new();
    for t in tasks {
        let r = t.await.map_err(|e| e.to_string())?;
        match (r.status, r.cache.as_str()) {
            (200, "miss") => misses += 1,
            (200, "hit") => hits += 1,
            _ => other += 1,
        }
        lat.push(r.ms);
    }
    let queries = svc.cosmos_count(DB, "queries").await - before;
    Ok(vec![Row {
        id: "6",
        what: "single-flight: 200 concurrent identical misses (first Cosmos query held 300 ms)"
            .into(),
        result: format!(
            "{queries} Cosmos quer{}; {misses} answered `miss`, {hits} `hit`, {other} other",
            if queries == 1 { "y" } else { "ies" },
        ),
        p50: msf(pct(&lat, 50.0)),
        p99: msf(pct(&lat, 99.0)),
        ratio: format!("{queries} / 200"),
        target: verdict(queries == 1, format!("1 query; {queries}")),
    }])
}
