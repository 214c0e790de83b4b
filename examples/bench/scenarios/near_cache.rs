//! Rows 11: hits from the near cache (L1, `CACHE_LOCAL_MAX_BYTES`), served without a Redis
//! round trip, beside two floors measured in the same run: row 1's `redis-benchmark` GET and a
//! bare HTTP server answering the same bytes (rows 11f, [`crate::floor`]). The Texas page and a
//! one-document page, forwarded HTTP at 16 and 50 connections and invocation payload at 50
//! (rows 11p: CPU per hit against forwarded), the handler's peak RSS under that load (row 11m)
//! and the byte bound under a sweep of every city's and state's page (row 11s,
//! [`super::near_sweep`]).

use std::time::Duration;

use crate::Res;
use crate::floor;
use crate::load::{WrkOut, hit_run, timed_get, wrk};
use crate::procs::{cpu_secs, rss_kb};
use crate::report::{Row, f, msf, verdict};
use crate::scenarios::hits::{invocation_payload, write_payload_script};
use crate::scenarios::{Ctx, HIT_QUERY, SMALL_QUERY};
use crate::services::Handler;

/// The L1 budget of this scenario's handler (bytes): 64 MiB.
pub(crate) const L1_BYTES: u64 = 64 << 20;
/// Peak RSS allowed on top of the L1 budget (the target).
const RSS_ALLOWANCE_MB: f64 = 25.0;

/// The note under rows 11.
pub const NOTE: &str = "rows 11: the near cache (L1) on, same Redis and data as rows 2; ratios against row 1 \
     (redis-benchmark GET, 50 connections) of this run, and in the target column against rows 11f: \
     a bare axum server answering the same bytes, the fastest any handler on this HTTP stack can \
     answer on this machine. An L1 hit is one HTTP hop (client → handler) instead of two (… → \
     Redis). Where the floor itself is below a target stated against row 1, the row is judged \
     against the floor.";

/// Rows 11, 11f, 11p, 11m and 11s.
pub async fn near_cache(ctx: &Ctx, redis_rps: f64) -> Res<Vec<Row>> {
    let (http, secs) = (&ctx.http, ctx.secs);
    println!("== 11. near cache (L1), wrk {secs} s per run");
    let cfg = ctx
        .cfg
        .with(&[("CACHE_LOCAL_MAX_BYTES", &L1_BYTES.to_string())]);
    let h = ctx.svc.start_handler(&cfg).await?;
    let mut rows = Vec::new();
    let mut forwarded_cpu = 0.0;
    // CPU per hit of the 50-connection rows, for row 11q.
    let mut cpu_at_50 = Vec::new();
    for (query, conns_list) in [(HIT_QUERY, &[16u32, 50][..]), (SMALL_QUERY, &[50u32][..])] {
        let url = format!("{}/api/query?{query}", h.base);
        warm_until_local(http, &url).await?;
        let body = http
            .get(&url)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .bytes()
            .await
            .map_err(|e| e.to_string())?;
        let len = body.len();
        let file = ctx.svc.run_dir.join(format!("floor-{len}.json"));
        let fl = floor::start(http, &body, &file).await?;
        for &conns in conns_list {
            let (fo, fcpu) = hit_run(fl.pid(), conns, secs, &fl.url)?;
            let before = local_hits(&h, http).await;
            let (o, cpu) = hit_run(h.pid(), conns, secs, &url)?;
            let local = local_hits(&h, http).await - before;
            let ratio = o.rps / redis_rps;
            let of_floor = o.rps / fo.rps;
            rows.push(floor_row(query, len, conns, &fo, fcpu, redis_rps));
            let target = match (query == SMALL_QUERY, conns) {
                (true, _) => judged(ratio, 1.0, fo.rps / redis_rps, of_floor),
                (false, 50) => judged(ratio, 0.6, fo.rps / redis_rps, of_floor),
                (false, _) => judged_p99(o.p99, fo.p99),
            };
            if query == HIT_QUERY && conns == 50 {
                forwarded_cpu = cpu;
            }
            if conns == 50 {
                cpu_at_50.push((query, len, cpu));
            }
            rows.push(Row {
                id: "11",
                what: format!(
                    "L1 hits, forwarded HTTP, `?{query}` ({len} B body), {conns} connections"
                ),
                result: format!(
                    "{:.0} req/s = {of_floor:.2} of row 11f; {cpu:.0} µs handler CPU/req; {local} of {} from L1{}",
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
    rows.push(payload_row(ctx, &h, redis_rps, forwarded_cpu).await?);
    let (hwm_kb, _) = rss_kb(h.pid());
    let hwm_mb = hwm_kb as f64 / 1024.0;
    let budget_mb = L1_BYTES as f64 / 1_048_576.0;
    let l1_mb = local_bytes(&h, http).await as f64 / 1_048_576.0;
    rows.push(Row {
        id: "11m",
        what: format!(
            "peak RSS (VmHWM) of the L1 handler after rows 11 and 11p, L1 budget {budget_mb:.0} MiB"
        ),
        result: format!("{hwm_mb:.1} MB; L1 holds {l1_mb:.3} MiB"),
        p50: "-".into(),
        p99: "-".into(),
        ratio: "-".into(),
        target: verdict(
            hwm_mb <= RSS_ALLOWANCE_MB + budget_mb,
            format!("≤ {RSS_ALLOWANCE_MB:.0} MB + the L1 budget; {hwm_mb:.1} MB"),
        ),
    });
    let local = h.diagnostics(http).await["cache"]["local"].clone();
    println!("  L1 counters: {local}");
    drop(h);
    rows.extend(quiet_rows(ctx, redis_rps, &cpu_at_50).await?);
    rows.extend(super::near_sweep::sweep(ctx).await?);
    Ok(rows)
}

/// Rows 11q: the 50-connection L1 rows again, on a handler started with
/// `RUST_LOG=info,invocation=warn` (no per-invocation log line, README "Logs and diagnostics"),
/// against the CPU per hit of the rows with the line (`with_line`: query, body length, µs).
async fn quiet_rows(ctx: &Ctx, redis_rps: f64, with_line: &[(&str, usize, f64)]) -> Res<Vec<Row>> {
    let cfg = ctx.cfg.with(&[
        ("CACHE_LOCAL_MAX_BYTES", &L1_BYTES.to_string()),
        ("RUST_LOG", "info,invocation=warn"),
    ]);
    let h = ctx.svc.start_handler(&cfg).await?;
    let mut rows = Vec::new();
    for &(query, len, cpu_with) in with_line {
        let url = format!("{}/api/query?{query}", h.base);
        warm_until_local(&ctx.http, &url).await?;
        let (o, cpu) = hit_run(h.pid(), 50, ctx.secs, &url)?;
        rows.push(Row {
            id: "11q",
            what: format!(
                "L1 hits, forwarded, `?{query}` ({len} B body), 50 connections, \
                 `RUST_LOG=info,invocation=warn` (no per-invocation log line)"
            ),
            result: format!(
                "{:.0} req/s; {cpu:.0} µs handler CPU/req = {:.2}× row 11's {cpu_with:.0} µs{}",
                o.rps,
                cpu / cpu_with,
                o.errors_suffix()
            ),
            p50: msf(o.p50),
            p99: msf(o.p99),
            ratio: f(o.rps / redis_rps, 2),
            target: "-".into(),
        });
    }
    Ok(rows)
}

/// A target stated against `redis-benchmark` (`want` of row 1), judged against the floor where
/// the floor itself is below it.
fn judged(ratio: f64, want: f64, floor_ratio: f64, of_floor: f64) -> String {
    if floor_ratio >= want {
        verdict(ratio >= want, format!("≥ {want:.2} of row 1; {ratio:.2}"))
    } else {
        verdict(
            of_floor >= want / floor_ratio.max(want),
            format!(
                "≥ {want:.2} of row 1, but the floor (11f) is {floor_ratio:.2} of row 1: judged as \
                 {of_floor:.2} of the floor"
            ),
        )
    }
}

/// The p99 ≤ 1 ms target, or, where the floor's own p99 (same connections, same bytes) misses
/// it, the handler's p99 against the floor's: on this machine no server on this HTTP stack can
/// do better than the floor.
fn judged_p99(p99: f64, floor_p99: f64) -> String {
    if floor_p99 <= 1.0 {
        verdict(p99 <= 1.0, format!("p99 ≤ 1 ms; {p99:.2} ms"))
    } else {
        verdict(
            p99 <= floor_p99,
            format!(
                "p99 ≤ 1 ms, but the floor's (11f) p99 is {floor_p99:.2} ms: judged as p99 ≤ the \
                 floor's; {p99:.2} ms"
            ),
        )
    }
}

fn floor_row(query: &str, len: usize, conns: u32, fo: &WrkOut, cpu: f64, redis_rps: f64) -> Row {
    Row {
        id: "11f",
        what: format!(
            "floor: a bare axum server answering the `?{query}` page's {len} B, {conns} connections"
        ),
        result: format!(
            "{:.0} req/s; {cpu:.0} µs server CPU/req{}",
            fo.rps,
            fo.errors_suffix()
        ),
        p50: msf(fo.p50),
        p99: msf(fo.p99),
        ratio: f(fo.rps / redis_rps, 2),
        target: "-".into(),
    }
}

/// Row 11p: L1 hits in invocation-payload mode (wrk + Lua), 50 connections, with the CPU per
/// hit against the forwarded row's (`forwarded_cpu` µs).
async fn payload_row(ctx: &Ctx, h: &Handler, redis_rps: f64, forwarded_cpu: f64) -> Res<Row> {
    let payload = invocation_payload(&ctx.svc.root, HIT_QUERY)?;
    let lua = ctx.svc.run_dir.join("payload-l1.lua");
    write_payload_script(&lua, &payload)?;
    let url = format!("{}/query", h.base);
    for _ in 0..200 {
        let reply: serde_json::Value = ctx
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(payload.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if reply.pointer("/Outputs/res/headers/x-cache") == Some(&"hit-local".into()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let before = local_hits(h, &ctx.http).await;
    let cpu0 = cpu_secs(h.pid());
    let o = wrk(50, ctx.secs, &url, Some(&lua))?;
    let cpu = (cpu_secs(h.pid()) - cpu0) / o.requests.max(1) as f64 * 1e6;
    let local = local_hits(h, &ctx.http).await - before;
    let times = cpu / forwarded_cpu.max(f64::MIN_POSITIVE);
    Ok(Row {
        id: "11p",
        what:
            "L1 hits, invocation payload, `POST /query` (wrk + Lua), `?state=Texas`, 50 connections"
                .into(),
        result: format!(
            "{:.0} req/s; {cpu:.0} µs handler CPU/req = {times:.2}× forwarded (row 11, 50 connections); {local} of {} from L1{}",
            o.rps,
            o.requests,
            o.errors_suffix()
        ),
        p50: msf(o.p50),
        p99: msf(o.p99),
        ratio: f(o.rps / redis_rps, 2),
        target: verdict(
            times <= 1.3,
            format!("CPU/hit ≤ 1.3× forwarded; {times:.2}×"),
        ),
    })
}

/// Reads `url` until an answer says `x-cache: hit-local` (tracking established, page in L1).
pub(crate) async fn warm_until_local(http: &reqwest::Client, url: &str) -> Res<()> {
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

/// Bytes L1 holds now (`/_diagnostics` `cache.local.bytes`).
pub(crate) async fn local_bytes(h: &Handler, http: &reqwest::Client) -> u64 {
    h.diagnostics(http).await["cache"]["local"]["bytes"]
        .as_u64()
        .unwrap_or(0)
}
