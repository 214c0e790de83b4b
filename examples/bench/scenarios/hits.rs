//! Rows 2: cache hits in both wire modes (forwarded HTTP and the invocation payload), at 16
//! and 50 connections, and a one-document page; the handler's CPU per request and how many
//! requests its own counters saw as hits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::Res;
use crate::load::{body_len, hit_run, timed_get, wrk};
use crate::procs::cpu_secs;
use crate::report::{Row, f, msf, verdict};
use crate::scenarios::rss::Samples;
use crate::scenarios::{Ctx, HIT_QUERY, SMALL_QUERY};
use crate::services::Handler;

/// Rows 2, the hit page's size (for row 1b) and the wrk Lua script of payload mode (for the
/// profile).
pub struct Hits {
    pub rows: Vec<Row>,
    pub body_len: usize,
    pub payload_script: PathBuf,
}

/// Warms `h` up (the Texas page in Redis, checked in both modes), then the wrk runs. Records
/// the memory samples at idle (after warm-up) and after the load in `mem`.
pub async fn hits(ctx: &Ctx, h: &Handler, redis_rps: f64, mem: &mut Samples) -> Res<Hits> {
    let (http, secs) = (&ctx.http, ctx.secs);
    println!("== 2. hits (wrk, {secs} s per run)");
    let texas = format!("{}/api/query?{HIT_QUERY}", h.base);
    let first = timed_get(http, &texas).await;
    let second = timed_get(http, &texas).await;
    if first.status != 200 || second.cache != "hit" {
        return Err(format!("warm-up failed: {first:?} then {second:?}"));
    }
    let page_len = body_len(http, &texas).await?;
    let payload = invocation_payload(&ctx.svc.root, HIT_QUERY)?;
    let lua = ctx.svc.run_dir.join("payload.lua");
    write_payload_script(&lua, &payload)?;
    let check = http
        .post(format!("{}/query", h.base))
        .header("content-type", "application/json")
        .body(payload.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json::<Value>()
        .await
        .map_err(|e| e.to_string())?;
    if check.pointer("/Outputs/res/headers/x-cache") != Some(&json!("hit")) {
        return Err(format!("payload-mode warm-up is not a hit: {check}"));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    mem.idle(h);

    let mut rows = Vec::new();
    for (mode, path, script) in [
        (
            "forwarded HTTP, `GET /api/query?state=Texas`",
            format!("/api/query?{HIT_QUERY}"),
            None,
        ),
        (
            "invocation payload, `POST /query` (wrk + Lua)",
            "/query".to_string(),
            Some(lua.as_path()),
        ),
    ] {
        for conns in [16u32, 50] {
            let hits_before = h.cache_hits(http).await;
            let cpu_before = cpu_secs(h.pid());
            let o = wrk(conns, secs, &format!("{}{path}", h.base), script)?;
            let cpu = cpu_secs(h.pid()) - cpu_before;
            let hits = h.cache_hits(http).await - hits_before;
            let ratio = o.rps / redis_rps;
            let target = if conns == 50 && script.is_none() {
                verdict(
                    ratio >= 0.6,
                    format!("≥ 0.60 of row 1; {:+.0} %", (ratio / 0.6 - 1.0) * 100.0),
                )
            } else if conns == 16 && script.is_none() {
                verdict(o.p99 <= 2.0, format!("p99 ≤ 2 ms; {:+.2} ms", o.p99 - 2.0))
            } else {
                "-".into()
            };
            rows.push(Row {
                id: "2",
                what: format!("hits, {mode}, {conns} connections ({page_len} B body)"),
                result: format!(
                    "{:.0} req/s; {:.0} µs handler CPU/req; {} of {} counted as hits{}",
                    o.rps,
                    cpu / o.requests.max(1) as f64 * 1e6,
                    hits,
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
    // The same at 50 connections for a one-document page: per-request cost without the bytes.
    let small = format!("{}/api/query?{SMALL_QUERY}", h.base);
    let _ = timed_get(http, &small).await;
    let small_len = body_len(http, &small).await?;
    let (o, cpu) = hit_run(h.pid(), 50, secs, &small)?;
    rows.push(Row {
        id: "2",
        what: format!(
            "hits, forwarded HTTP, one-document page `?{SMALL_QUERY}` ({small_len} B body), 50 connections"
        ),
        result: format!("{:.0} req/s; {:.0} µs handler CPU/req", o.rps, cpu),
        p50: msf(o.p50),
        p99: msf(o.p99),
        ratio: f(o.rps / redis_rps, 2),
        target: format!(
            "(≥ 0.60 of row 1: {:+.0} %)",
            (o.rps / redis_rps / 0.6 - 1.0) * 100.0
        ),
    });
    mem.after_load(h);
    Ok(Hits {
        rows,
        body_len: page_len,
        payload_script: lua,
    })
}

/// Writes the wrk Lua script that POSTs `payload` with the host's headers.
pub(crate) fn write_payload_script(lua: &Path, payload: &str) -> Res<()> {
    std::fs::write(
        lua,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json; charset=utf-8\"\n\
             wrk.headers[\"User-Agent\"] = \"Azure-Functions-Host/{v}\"\n\
             wrk.headers[\"X-Azure-Functions-HostVersion\"] = \"{v}\"\n\
             wrk.headers[\"X-Azure-Functions-InvocationId\"] = \"3f1c2b7e-9d4a-4c3e-8f55-0a1b2c3d4e5f\"\n\
             wrk.body = [==[{payload}]==]\n",
            v = host_emulator::HOST_VERSION
        ),
    )
    .map_err(|e| e.to_string())
}

/// The invocation-payload body the host would send for `GET /api/query?<query>`, built by the
/// host emulator's own code from the repository's `function.json`.
pub(crate) fn invocation_payload(root: &Path, query: &str) -> Res<String> {
    let functions = host_emulator::load_functions(root).map_err(|e| e.to_string())?;
    let function = functions
        .iter()
        .find(|f| f.name == "query")
        .ok_or("no query function")?;
    let mut headers = HeaderMap::new();
    headers.insert("host", HeaderValue::from_static("127.0.0.1:7071"));
    headers.insert("user-agent", HeaderValue::from_static("curl/7.88.1"));
    headers.insert("accept", HeaderValue::from_static("*/*"));
    let req = host_emulator::ClientRequest {
        method: Method::GET,
        scheme: "http".into(),
        host: "127.0.0.1:7071".into(),
        path: "/api/query".into(),
        query: Some(query.into()),
        headers,
        body: Bytes::new(),
    };
    let ctx = host_emulator::InvocationContext::new(None);
    Ok(host_emulator::build_invocation_payload(function, &req, &[], &ctx).to_compact_string())
}
