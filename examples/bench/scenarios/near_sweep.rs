//! Row 11s: the near cache's byte bound under a sweep of every city's page and every state's
//! page (each read twice: the miss that fills Redis and L1, then the read L1 may answer)
//! through a handler whose L1 budget is far smaller than all those pages together.

use std::collections::BTreeSet;

use crate::Res;
use crate::load::{query_url, timed_get};
use crate::procs::rss_kb;
use crate::report::{Row, verdict};
use crate::scenarios::Ctx;
use crate::scenarios::near_cache::local_bytes;

/// The L1 budget of the sweep (bytes): 256 KiB, under the pages' total.
const SWEEP_BYTES: u64 = 256 << 10;
/// `cache.local.bytes` is read every this many queries.
const SAMPLE_EVERY: usize = 25;

/// Row 11s.
pub async fn sweep(ctx: &Ctx) -> Res<Vec<Row>> {
    let http = &ctx.http;
    println!("== 11s. near cache byte bound: every city's and state's page");
    let cfg = ctx
        .cfg
        .with(&[("CACHE_LOCAL_MAX_BYTES", &SWEEP_BYTES.to_string())]);
    let h = ctx.svc.start_handler(&cfg).await?;
    let states: BTreeSet<&str> = ctx.cities.iter().map(|c| c.state.as_str()).collect();
    let mut urls: Vec<String> = ctx
        .cities
        .iter()
        .map(|c| query_url(&h.base, &[("city", &c.city), ("state", &c.state)]))
        .collect();
    urls.extend(states.iter().map(|s| query_url(&h.base, &[("state", s)])));
    let (mut max_bytes, mut page_bytes, mut local, mut failed) = (0u64, 0u64, 0usize, 0usize);
    for (i, url) in urls.iter().enumerate() {
        let first = timed_get(http, url).await;
        let second = timed_get(http, url).await;
        failed += usize::from(first.status != 200) + usize::from(second.status != 200);
        local += usize::from(second.cache == "hit-local");
        page_bytes += first.body_len as u64;
        if i % SAMPLE_EVERY == 0 || i + 1 == urls.len() {
            max_bytes = max_bytes.max(local_bytes(&h, http).await);
        }
    }
    let (hwm_kb, _) = rss_kb(h.pid());
    let kib = |b: u64| b as f64 / 1024.0;
    Ok(vec![Row {
        id: "11s",
        what: format!(
            "L1 byte bound: {} pages (every city, every state), each read twice, through a {:.0} KiB L1",
            urls.len(),
            kib(SWEEP_BYTES)
        ),
        result: format!(
            "pages total {:.0} KiB; L1 held at most {:.1} KiB (sampled every {SAMPLE_EVERY} pages); \
             {local} second reads from L1; VmHWM {:.1} MB{}",
            kib(page_bytes),
            kib(max_bytes),
            hwm_kb as f64 / 1024.0,
            if failed > 0 {
                format!("; {failed} non-200")
            } else {
                String::new()
            }
        ),
        p50: "-".into(),
        p99: "-".into(),
        ratio: "-".into(),
        target: verdict(
            max_bytes <= SWEEP_BYTES && page_bytes > SWEEP_BYTES && failed == 0,
            format!("L1 bytes ≤ the budget; {:.1} KiB", kib(max_bytes)),
        ),
    }])
}
