//! Rows 4: start-up. Exec → first `GET /` answered, and exec → first cache hit of a page
//! already in Redis, by `GET` (needs the partition-key path from Cosmos) and by `POST` with
//! `partitionKey` (needs no Cosmos call).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use test_support::free_port;

use crate::Res;
use crate::load::{raw_get, raw_request};
use crate::report::{Row, msf, verdict};
use crate::scenarios::{Ctx, HIT_QUERY};
use crate::services::{HandlerCfg, Services};
use crate::stats::{ms, pct};

/// A `POST /api/query` body for the same Texas page, with its partition key: serving it needs
/// no container metadata from Cosmos.
const POST_HIT_BODY: &str = r#"{"query":"SELECT * FROM c WHERE c.state = @state","parameters":[{"name":"@state","value":"Texas"}],"partitionKey":"Texas"}"#;

/// Rows 4 over 7 (quick) or 21 starts of the default handler.
pub fn startup(ctx: &Ctx) -> Res<Vec<Row>> {
    let starts = if ctx.opts.quick { 7 } else { 21 };
    println!("== 4. start-up: {starts} starts");
    let s = measure(&ctx.svc, &ctx.cfg, starts)?;
    let (ready, first_hit, post_hit) = (&s.ready, &s.get_hit, &s.post_hit);
    Ok(vec![
        Row {
            id: "4",
            what: format!("start-up: exec → first successful `GET /`, {starts} starts"),
            result: format!("median {}", msf(pct(ready, 50.0))),
            p50: msf(pct(ready, 50.0)),
            p99: msf(pct(ready, 99.0)),
            ratio: "n/a".into(),
            target: verdict(
                pct(ready, 50.0) <= 20.0,
                format!("≤ 20 ms; {:+.1} ms", pct(ready, 50.0) - 20.0),
            ),
        },
        Row {
            id: "4",
            what: format!(
                "start-up: exec → first cache hit, `GET /api/query?state=Texas` (page already in Redis; the GET needs the container's partition-key path from Cosmos first), {} starts",
                first_hit.len()
            ),
            result: format!(
                "median {} ({})",
                msf(pct(first_hit, 50.0)),
                s.first_outcomes
            ),
            p50: msf(pct(first_hit, 50.0)),
            p99: msf(pct(first_hit, 99.0)),
            ratio: "n/a".into(),
            target: "-".into(),
        },
        Row {
            id: "4",
            what: format!(
                "start-up: exec → first cache hit, the same page by `POST /api/query` with `partitionKey` (needs no Cosmos call), {} starts",
                post_hit.len()
            ),
            result: format!("median {}", msf(pct(post_hit, 50.0))),
            p50: msf(pct(post_hit, 50.0)),
            p99: msf(pct(post_hit, 99.0)),
            ratio: "n/a".into(),
            target: "-".into(),
        },
    ])
}

/// Milliseconds to readiness, to the first GET hit, to the first POST hit; first outcomes.
struct Startup {
    ready: Vec<f64>,
    get_hit: Vec<f64>,
    post_hit: Vec<f64>,
    first_outcomes: String,
}

/// Start-up timings: exec → first `GET /` answered; exec → first `x-cache: hit`, by a `GET`
/// (even starts) or an equivalent `POST` (odd starts). Blocking on purpose: raw sockets and
/// sleeps of 200 µs, no runtime between the process and the clock.
fn measure(svc: &Services, cfg: &HandlerCfg, n: usize) -> Res<Startup> {
    // Make sure both pages are in Redis before the first measured start.
    {
        let port = free_port();
        let mut p = svc.spawn_handler(cfg, port)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while raw_get(port, "/").is_none_or(|r| r.status != 200) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        for _ in 0..2 {
            let _ = raw_get(port, &format!("/api/query?{HIT_QUERY}"));
            let _ = raw_request(port, "POST", "/api/query", POST_HIT_BODY);
        }
        p.stop();
    }
    let (mut ready, mut hit, mut post_hit) = (Vec::new(), Vec::new(), Vec::new());
    let mut first_outcome = BTreeMap::<String, usize>::new();
    for i in 0..n {
        let post = i % 2 == 1;
        let port = free_port();
        let t0 = Instant::now();
        let mut p = svc.spawn_handler(cfg, port)?;
        let deadline = t0 + Duration::from_secs(10);
        loop {
            if raw_get(port, "/").is_some_and(|r| r.status == 200) {
                ready.push(ms(t0.elapsed()));
                break;
            }
            if Instant::now() > deadline {
                return Err("start-up: no answer to GET / within 10 s".into());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let mut first = true;
        loop {
            let r = if post {
                raw_request(port, "POST", "/api/query", POST_HIT_BODY)
            } else {
                raw_get(port, &format!("/api/query?{HIT_QUERY}"))
            }
            .ok_or("start-up: query failed")?;
            let outcome = r
                .head
                .lines()
                .find_map(|l| l.strip_prefix("x-cache:"))
                .unwrap_or("none")
                .trim()
                .to_string();
            if first {
                let key = format!("{} {outcome}", if post { "POST" } else { "GET" });
                *first_outcome.entry(key).or_default() += 1;
                first = false;
            }
            if outcome == "hit" {
                if post {
                    post_hit.push(ms(t0.elapsed()));
                } else {
                    hit.push(ms(t0.elapsed()));
                }
                break;
            }
            if Instant::now() > deadline {
                return Err("start-up: no cache hit within 10 s".into());
            }
        }
        p.stop();
    }
    let first_outcomes = first_outcome
        .iter()
        .map(|(k, v)| format!("first query answered `{k}` {v}×"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Startup {
        ready,
        get_hit: hit,
        post_hit,
        first_outcomes,
    })
}
