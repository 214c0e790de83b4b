//! The benchmark behind `scripts/bench.sh` (run that: it installs the tools and builds this).
//!
//! Starts the real services on free loopback ports (its own `redis-server`, the local
//! Cosmos-protocol server `tests/cosmos/launcher.js`), seeds them, runs the release `handler`
//! binary the way the Functions host does (environment, `FUNCTIONS_CUSTOMHANDLER_PORT`), and
//! measures, in one run on one machine, with `wrk` and `redis-benchmark` as the load generators:
//! Redis's own GET ceiling, cache hits in both wire modes, misses against the bare SDK call,
//! start-up, peak RSS, single-flight, sizes, scale (1,000 / 17,343 / 171,075 cities) and
//! read/write mixes. Prints a markdown table (also written to `.run/bench/results.md`).
//!
//! ```text
//! bench [--no-world] [--no-profile] [--quick]
//!   --no-world     skip the 171,075-city container (seeding it takes about a minute)
//!   --no-profile   skip the perf profile of the hit path
//!   --quick        shorter runs (a smoke test of the benchmark itself; numbers are noisier)
//! ```
//!
//! Every load is on 127.0.0.1, bounded in count and time.
//!
//! ## Layout
//! - `services.rs`: the services (test-support's Redis and Cosmos launcher) and the release
//!   handler processes, each with its own environment.
//! - `procs.rs`: child processes, RSS, CPU time. `load.rs`: the load generators (`wrk`,
//!   `redis-benchmark`, reqwest and raw HTTP requests). `stats.rs`: percentiles.
//!   `data.rs`: the city data sets. `report.rs`: the table, its cell formats, the machine.
//! - `floor.rs`: the bare HTTP server of rows 11f (this binary, started with `--floor-server`).
//! - `scenarios/`: one function per measurement, each returning its report rows; [`run`] below
//!   calls them in the table's order.

mod data;
mod floor;
mod load;
mod procs;
mod report;
mod scenarios;
mod services;
mod stats;

use std::process::ExitCode;

use report::{Report, RunClock};
use scenarios::{
    Ctx, ceiling, change_feed, hits, misses, near_cache, profile, rss, scale, single_flight, sizes,
    startup, write_mix,
};

/// Errors end the run with their message: every failure here is a broken setup, not a result.
type Res<T> = Result<T, String>;

/// The command-line switches.
#[derive(Clone, Copy)]
struct Opts {
    world: bool,
    profile: bool,
    quick: bool,
}

impl Opts {
    /// Seconds per `wrk` run.
    fn wrk_secs(self) -> u32 {
        if self.quick { 3 } else { 8 }
    }
}

fn main() -> ExitCode {
    if let Some(code) = floor::serve_if_asked() {
        return code;
    }
    let mut opts = Opts {
        world: true,
        profile: true,
        quick: false,
    };
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--no-world" => opts.world = false,
            "--no-profile" => opts.profile = false,
            "--quick" => opts.quick = true,
            "-h" | "--help" => {
                println!("usage: bench [--no-world] [--no-profile] [--quick]");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?}");
                return ExitCode::from(2);
            }
        }
    }
    // The bare-SDK measurements run in this process: it needs the same SDK settings as the
    // handler. Set before any thread exists (the Cosmos launcher is a child process, started
    // here so that its settings are known before the runtime's threads).
    services::set_sdk_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The whole run: the scenarios in the table's order, then the notes and the results file.
async fn run(opts: Opts) -> Res<()> {
    let clock = RunClock::start();
    let mut rep = Report::default();
    let machine = report::machine();
    println!("== machine\n{machine}");
    let ctx = Ctx::start(opts)?;
    // BENCH_ONLY=change-feed, write-mix or near-cache: that section alone (the near cache after row 1,
    // its reference).
    match std::env::var("BENCH_ONLY").as_deref() {
        Ok("change-feed") => {
            rep.add(change_feed::change_feed(&ctx).await?);
            rep.note(change_feed::NOTE.into());
            return rep.write(&machine, "", &ctx.svc.run_dir);
        }
        Ok("write-mix") => {
            rep.add(write_mix::write_mix(&ctx).await?);
            rep.note(write_mix::NOTE.into());
            return rep.write(&machine, "", &ctx.svc.run_dir);
        }
        Ok("near-cache") => {
            let ceiling = ceiling::redis_get(&ctx)?;
            rep.add(ceiling.rows);
            rep.add(near_cache::near_cache(&ctx, ceiling.rps).await?);
            rep.note(near_cache::NOTE.into());
            return rep.write(&machine, "", &ctx.svc.run_dir);
        }
        _ => {}
    }

    let ceiling = ceiling::redis_get(&ctx)?;
    rep.add(ceiling.rows);
    // One handler serves rows 2, 3, 6 and 5 (its memory is followed across them) and the profile.
    let h = ctx.svc.start_handler(&ctx.cfg).await?;
    let mut mem = rss::Samples::at_ready(&h);
    let hit = hits::hits(&ctx, &h, ceiling.rps, &mut mem).await?;
    rep.add(hit.rows);
    rep.add(ceiling::redis_get_sized(&ctx, hit.body_len, ceiling.rps)?);
    rep.add(near_cache::near_cache(&ctx, ceiling.rps).await?);
    rep.note(near_cache::NOTE.into());
    rep.add(misses::misses(&ctx, &h).await?);
    rep.add(single_flight::single_flight(&ctx, &h).await?);
    mem.after_burst(&h);
    rep.add(rss::rss(&mem));
    let mut profile_text = String::new();
    if opts.profile {
        let p = profile::profile(&ctx, &h, &hit.payload_script, ceiling.rps).await?;
        rep.add(p.rows);
        profile_text = p.text;
    }
    drop(h);
    rep.add(startup::startup(&ctx)?);
    rep.add(sizes::sizes(&ctx)?);
    rep.add(write_mix::write_mix(&ctx).await?);
    rep.note(write_mix::NOTE.into());
    rep.add(change_feed::change_feed(&ctx).await?);
    rep.note(change_feed::NOTE.into());
    rep.add(scale::scale(&ctx).await?);

    for n in clock.closing_notes(&ctx.svc) {
        rep.note(n);
    }
    rep.write(&machine, &profile_text, &ctx.svc.run_dir)?;
    Ok(())
}
