//! The profile of the hit path (`perf record` on the handler under wrk, both wire modes) and
//! rows 2x: the experiments it suggests, each on a fresh handler with one setting changed.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::Res;
use crate::load::{WrkOut, hit_run, timed_get, wrk};
use crate::procs::rss_kb;
use crate::report::{Row, f, msf};
use crate::scenarios::{Ctx, HIT_QUERY};
use crate::services::Handler;
use crate::stats::pct;

/// Rows 2x and the profile's markdown section.
pub struct Profile {
    pub rows: Vec<Row>,
    pub text: String,
}

/// The variants compared in rows 2x: experiments the profile suggests, each on a fresh handler
/// with one setting changed (a label and the settings added to the default handler's).
const VARIANTS: [(&str, &[(&str, &str)]); 4] = [
    ("baseline (a fresh handler, same settings as row 2)", &[]),
    (
        "`RUST_LOG=warn`: no per-invocation log line",
        &[("RUST_LOG", "warn")],
    ),
    (
        "`TOKIO_WORKER_THREADS=1` (one runtime worker instead of one per core)",
        &[("TOKIO_WORKER_THREADS", "1")],
    ),
    (
        "glibc malloc without trimming (`GLIBC_TUNABLES=glibc.malloc.trim_threshold=…:mmap_threshold=…`)",
        &[(
            "GLIBC_TUNABLES",
            "glibc.malloc.trim_threshold=268435456:glibc.malloc.mmap_threshold=4194304",
        )],
    ),
];

/// The profile of `h` (payload mode through the wrk script `lua`), then rows 2x.
pub async fn profile(ctx: &Ctx, h: &Handler, lua: &Path, redis_rps: f64) -> Res<Profile> {
    println!("== profile: perf record during a 50-connection forwarded hit run");
    let text = perf_profile(ctx, h, ctx.secs.min(6), lua)?;
    // All four handlers run side by side; three rounds of 5 s each, in a rotating order,
    // and the median per variant (single runs differ by ±10 % here).
    let mut handlers = Vec::new();
    for (_, env) in VARIANTS {
        let v = ctx.svc.start_handler(&ctx.cfg.with(env)).await?;
        let _ = timed_get(&ctx.http, &format!("{}/api/query?{HIT_QUERY}", v.base)).await;
        handlers.push(v);
    }
    let rounds = if ctx.opts.quick { 1 } else { 3 };
    let mut got: Vec<Vec<(WrkOut, f64)>> = vec![Vec::new(); handlers.len()];
    for round in 0..rounds {
        for k in 0..handlers.len() {
            let i = (k + round) % handlers.len();
            let v = &handlers[i];
            let url = format!("{}/api/query?{HIT_QUERY}", v.base);
            got[i].push(hit_run(v.pid(), 50, ctx.secs.min(5), &url)?);
        }
    }
    let med = |xs: Vec<f64>| pct(&xs, 50.0);
    let base_rps = med(got[0].iter().map(|(o, _)| o.rps).collect());
    let base_cpu = med(got[0].iter().map(|(_, c)| *c).collect());
    let mut rows = Vec::new();
    for (i, (label, _)) in VARIANTS.iter().enumerate() {
        let rps: Vec<f64> = got[i].iter().map(|(o, _)| o.rps).collect();
        let cpu = med(got[i].iter().map(|(_, c)| *c).collect());
        let (lo, hi) = (pct(&rps, 0.0), pct(&rps, 100.0));
        let (hwm, _) = rss_kb(handlers[i].pid());
        let rps = med(rps);
        rows.push(Row {
            id: "2x",
            what: format!(
                "experiment: hits, forwarded, 50 connections, {label}; median of {rounds} × 5 s"
            ),
            result: format!(
                "{rps:.0} req/s (runs {lo:.0}–{hi:.0}); {cpu:.0} µs handler CPU/req; VmHWM {:.1} MB",
                hwm as f64 / 1024.0
            ),
            p50: msf(med(got[i].iter().map(|(o, _)| o.p50).collect())),
            p99: msf(med(got[i].iter().map(|(o, _)| o.p99).collect())),
            ratio: f(rps / redis_rps, 2),
            target: format!(
                "{:+.1} % req/s, {:+.1} % CPU/req vs the baseline",
                (rps / base_rps - 1.0) * 100.0,
                (cpu / base_cpu - 1.0) * 100.0
            ),
        });
    }
    Ok(Profile { rows, text })
}

/// `perf record` on `h` for `secs` of 50-connection wrk hits, per wire mode; the flat profile
/// as markdown (or why there is none).
fn perf_profile(ctx: &Ctx, h: &Handler, secs: u32, lua: &Path) -> Res<String> {
    let works = Command::new("perf")
        .args(["stat", "-e", "instructions", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        return Ok("`perf stat -e instructions true` failed here: no profile.".into());
    }
    let mut text = String::new();
    for (mode, path, script) in [
        ("forwarded", format!("/api/query?{HIT_QUERY}"), None),
        ("payload", "/query".to_string(), Some(lua)),
    ] {
        let data = ctx.svc.run_dir.join(format!("perf-{mode}.data"));
        let mut rec = Command::new("perf")
            .args(["record", "-F", "999", "-o"])
            .arg(&data)
            .args(["-p", &h.pid().to_string(), "--", "sleep", &secs.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("perf: {e}"))?;
        let o = wrk(50, secs + 1, &format!("{}{path}", h.base), script)?;
        let _ = rec.wait();
        let report = |sort: &str, limit: &str| {
            Command::new("perf")
                .args([
                    "report",
                    "--stdio",
                    "--no-children",
                    "-q",
                    "--percent-limit",
                    limit,
                    "--sort",
                    sort,
                    "-i",
                ])
                .arg(&data)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let trim = |t: String, n: usize| {
            t.lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .take(n)
                .map(|l| l.trim_end().chars().take(150).collect::<String>())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let _ = write!(
            text,
            "### {mode} mode\n\n`perf record -F 999 -p <handler>` for {secs} s of `wrk -t2 -c50` {mode} hits \
             ({:.0} req/s while profiled). Flat profile (no call graphs: the release build has no \
             debug info or frame pointers). Samples by binary:\n\n```\n{}\n```\n\nTop symbols:\n\n```\n{}\n```\n\n",
            o.rps,
            trim(report("dso", "0.5"), 12),
            trim(report("dso,symbol", "0.7"), 40)
        );
    }
    Ok(text)
}
