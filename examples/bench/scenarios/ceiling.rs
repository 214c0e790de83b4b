//! Row 1 (Redis's own GET ceiling, the reference for the hit rows) and row 1b (the same with
//! values of the cached page's size, for context).

use crate::Res;
use crate::load::redis_benchmark_median;
use crate::report::{Row, f, msf};
use crate::scenarios::Ctx;

/// Row 1 and the ceiling itself (requests/s) for the ratios of later rows.
pub struct Ceiling {
    pub rows: Vec<Row>,
    pub rps: f64,
}

/// Row 1: `redis-benchmark -t get` against this run's Redis, median of 3 runs.
pub fn redis_get(ctx: &Ctx) -> Res<Ceiling> {
    println!("== 1. redis-benchmark");
    // Three runs, the median (its run-to-run spread on a shared 2-core VM is ±15 %).
    let m = redis_benchmark_median(ctx.svc.redis.port, &[])?;
    let row = Row {
        id: "1",
        what: "`redis-benchmark -t get -c 50 -n 200000 -q` (same Redis): the ceiling, median of 3 runs".into(),
        result: format!("{:.0} req/s (runs: {:.0}–{:.0})", m.rps, m.min_rps, m.max_rps),
        p50: msf(m.p50),
        p99: "n/a".into(),
        ratio: "1 (reference)".into(),
        target: "-".into(),
    };
    Ok(Ceiling {
        rows: vec![row],
        rps: m.rps,
    })
}

/// Row 1b: Redis with a value of the page's size (`body_len` bytes), for context (not a target).
pub fn redis_get_sized(ctx: &Ctx, body_len: usize, redis_rps: f64) -> Res<Vec<Row>> {
    let m = redis_benchmark_median(ctx.svc.redis.port, &["-d", &body_len.to_string()])?;
    Ok(vec![Row {
        id: "1b",
        what: format!(
            "`redis-benchmark` as row 1 with `-d {body_len}` (the cached page's size), median of 3, for context"
        ),
        result: format!("{:.0} req/s", m.rps),
        p50: msf(m.p50),
        p99: "n/a".into(),
        ratio: f(m.rps / redis_rps, 2),
        target: "-".into(),
    }])
}
