//! The near cache's consistency checker: several handler instances with L1 on, all on one
//! Redis and one database, under concurrent reads and writes. Each read's page is judged
//! against the writes acknowledged before the read started ([`verdict`]): a read on the
//! writer's own instance, or on another instance ≥ 10 ms after the writer's 200, must never
//! miss a write; a read on another instance within those 10 ms may (the invalidation push is
//! on its way) and is reported with its lag.
//!
//! The second run sends one instance's Redis traffic, its tracking connection included,
//! through a chaos proxy that delays it (50, 100, 150 ms each way), then black-holes it for
//! 2 s: the staleness that instance can show stays within the heartbeat bound (250 ms).
//!
//! `NEAR_CHECKER_READS`, `NEAR_CHECKER_WRITES` and `NEAR_CHECKER_INSTANCES` override the
//! defaults (20,000 reads, 5,000 writes, 3 instances).

mod verdict;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde::Deserialize;
use serde_json::json;

use crate::near_cache::L1;
use crate::support::chaos_proxy::{Behaviour, ChaosProxy};
use crate::support::stack::city_rows;
use crate::support::{Mode, Stack, instances};
use verdict::{Class, Read, Verdict, Write};
/// The pages read: a few states' whole pages (one page each), so every instance keeps them
/// in L1 between writes and every write to one of their cities shows on one of them.
const STATES: [&str; 3] = ["Texas", "Ohio", "Washington"];
/// Versions start above every real population, so a version is never confused with one.
const FIRST_VERSION: u64 = 1_000_000_000;
/// Concurrent readers and writers (two Tokio workers drive them and every instance).
const READERS: usize = 12;
const WRITERS: usize = 3;
/// The heartbeat bound of `src/cache/near.rs` (`HEARTBEAT_BOUND`, crate-private).
const HEARTBEAT_BOUND: Duration = Duration::from_millis(250);

/// How much to run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    reads: usize,
    writes: usize,
    instances: usize,
}

impl Plan {
    fn from_env() -> Self {
        let count = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Self {
            reads: count("NEAR_CHECKER_READS", 20_000),
            writes: count("NEAR_CHECKER_WRITES", 5_000),
            // The chaos run writes through every instance but the first.
            instances: count("NEAR_CHECKER_INSTANCES", 3).max(2),
        }
    }
}

/// The part of a page the checker reads.
#[derive(Deserialize)]
struct Page {
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    city: String,
    #[serde(default)]
    population: u64,
}

/// Everything the readers and writers share.
struct Run {
    fleet: Vec<axum::Router>,
    /// Instances that take writes.
    writers_on: Vec<usize>,
    /// `(city, state)` of every city on the pages read.
    cities: Vec<(String, String)>,
    /// Per entry of [`STATES`]: its cities, by name, to their index in `cities`.
    by_state: Vec<HashMap<String, usize>>,
    /// Writes to one city are serialized, so Cosmos holds that city's versions in order
    /// (concurrent upserts of one document would be last-writer-wins, not a cache bug).
    locks: Vec<tokio::sync::Mutex<()>>,
    next_version: AtomicU64,
    /// Writes claimed so far (writers stop at the plan's count).
    claimed: AtomicUsize,
    /// Reads done so far, and writers still running: readers go on until both the plan's
    /// reads are done and no writer runs, so every write happens under reads.
    reads_done: AtomicUsize,
    busy: AtomicUsize,
    /// Set when the chaos phases are over: everyone stops.
    stop: AtomicBool,
    /// The current chaos phase, recorded with each read.
    phase: AtomicUsize,
    writes: Mutex<Vec<Write>>,
    reads: Mutex<Vec<(usize, Read)>>,
}

impl Run {
    fn new(fleet: Vec<axum::Router>, writers_on: Vec<usize>) -> Self {
        let rows = city_rows();
        let mut cities = Vec::new();
        let mut by_state = vec![HashMap::new(); STATES.len()];
        for row in rows {
            if let Some(s) = STATES.iter().position(|s| *s == row.state) {
                by_state[s].insert(row.city.clone(), cities.len());
                cities.push((row.city, row.state));
            }
        }
        Self {
            fleet,
            writers_on,
            locks: cities.iter().map(|_| tokio::sync::Mutex::new(())).collect(),
            cities,
            by_state,
            next_version: AtomicU64::new(FIRST_VERSION),
            claimed: AtomicUsize::new(0),
            reads_done: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            phase: AtomicUsize::new(0),
            writes: Mutex::new(Vec::new()),
            reads: Mutex::new(Vec::new()),
        }
    }

    fn pick(len: usize) -> usize {
        rand::random::<u32>() as usize % len
    }

    /// Writes a new version of a random city through a random writing instance, and logs
    /// when its 200 arrived.
    async fn write(&self) {
        let city = Self::pick(self.cities.len());
        let by = self.writers_on[Self::pick(self.writers_on.len())];
        let _serialized = self.locks[city].lock().await;
        let version = self.next_version.fetch_add(1, Ordering::SeqCst);
        let (name, state) = &self.cities[city];
        let id = cosmos_cache_handler::seed::city_id(name, state);
        let doc = json!({"id": id, "city": name, "state": state, "population": version});
        let reply = instances::post(&self.fleet[by], "update", &doc.to_string()).await;
        let acked = Instant::now();
        assert_eq!(reply.status, 200, "update on #{by}: {}", reply.text);
        self.writes.lock().expect("write log").push(Write {
            city,
            version,
            acked,
            by,
        });
    }

    /// Reads a random state's page on instance `by` and logs what each of its cities showed.
    async fn read(&self, by: usize) {
        let s = Self::pick(STATES.len());
        let phase = self.phase.load(Ordering::SeqCst);
        let path = format!("query?state={}&maxItemCount=1000", STATES[s]);
        let started = Instant::now();
        let reply = instances::get(&self.fleet[by], &path).await;
        let took = started.elapsed();
        let ok = reply.status == 200;
        let seen = if ok {
            let page: Page = serde_json::from_str(&reply.text)
                .unwrap_or_else(|e| panic!("page on #{by} ({e}): {}", reply.text));
            let shown: HashMap<&str, u64> = page
                .items
                .iter()
                .map(|i| (i.city.as_str(), i.population))
                .collect();
            self.by_state[s]
                .iter()
                .map(|(name, &city)| (city, shown.get(name.as_str()).copied().unwrap_or(0)))
                .collect()
        } else {
            Vec::new()
        };
        let cache = if ok {
            reply.cache().to_string()
        } else {
            format!("status {}", reply.status)
        };
        self.reads.lock().expect("read log").push((
            phase,
            Read {
                started,
                by,
                cache,
                seen,
                ok,
                took,
            },
        ));
        self.reads_done.fetch_add(1, Ordering::SeqCst);
    }

    /// Runs the writers to the plan's count, each instance's readers (so a slow instance
    /// does not hold up the others' reads) until the plan's reads are done and the writers
    /// are; with `alongside` (the chaos phases), until it ends. With `bursts`, writes
    /// happen only in their windows, so that L1 fills between them. With `pause`, each
    /// reader waits that long between reads (a bounded read rate leaves the two workers time
    /// to run the proxy and the heartbeats on time, which the chaos run measures).
    async fn drive(
        self: &Arc<Self>,
        plan: Plan,
        bursts: Option<Bursts>,
        pause: Option<Duration>,
        alongside: Option<impl Future<Output = ()>>,
    ) {
        let start = Instant::now();
        self.busy.store(WRITERS, Ordering::SeqCst);
        let writers = (0..WRITERS).map(|_| {
            let run = self.clone();
            async move {
                while !run.stop.load(Ordering::SeqCst)
                    && run.claimed.fetch_add(1, Ordering::SeqCst) < plan.writes
                {
                    if let Some(bursts) = bursts {
                        tokio::time::sleep(bursts.wait(start.elapsed())).await;
                    }
                    run.write().await;
                }
                run.busy.fetch_sub(1, Ordering::SeqCst);
            }
        });
        let readers = (0..READERS).map(|r| {
            let run = self.clone();
            let by = r % run.fleet.len();
            async move {
                while !run.stop.load(Ordering::SeqCst)
                    && (run.reads_done.load(Ordering::SeqCst) < plan.reads
                        || run.busy.load(Ordering::SeqCst) > 0)
                {
                    run.read(by).await;
                    // An L1 hit completes without ever waiting, so a reader would keep its
                    // worker (starving the writers, the tracking tasks and the proxy) unless
                    // it gives way after each read.
                    match pause {
                        Some(pause) => tokio::time::sleep(pause).await,
                        None => tokio::task::yield_now().await,
                    }
                }
            }
        });
        // Spawned, so that the two workers share the tasks.
        let tasks: Vec<_> = writers
            .map(tokio::spawn)
            .chain(readers.map(tokio::spawn))
            .collect();
        if let Some(alongside) = alongside {
            alongside.await;
            self.stop.store(true, Ordering::SeqCst);
        }
        for joined in join_all(tasks).await {
            joined.expect("checker task");
        }
    }

    fn writes(&self) -> Vec<Write> {
        self.writes.lock().expect("write log").clone()
    }

    /// The verdict over the reads of the phases `phases` selects.
    fn judge(&self, phases: impl Fn(usize) -> bool) -> Verdict {
        let reads: Vec<Read> = self
            .reads
            .lock()
            .expect("read log")
            .iter()
            .filter(|(p, _)| phases(*p))
            .map(|(_, r)| r.clone())
            .collect();
        verdict::judge(self.cities.len(), self.fleet.len(), &self.writes(), &reads)
    }
}

/// ≥ 3 instances with L1 on, 20,000 reads under 5,000 writes: no read on the writer's
/// instance, nor on another instance ≥ 10 ms after the writer's 200, misses the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_never_serve_a_settled_write_stale() {
    let plan = Plan::from_env();
    let stack = Stack::services(Mode::Forwarding, true, &[L1]);
    let fleet: Vec<axum::Router> = (0..plan.instances).map(|_| stack.instance(&[])).collect();
    let writers_on = (0..plan.instances).collect();
    let run = Arc::new(Run::new(fleet, writers_on));
    let started = Instant::now();
    run.drive(plan, None, None, None::<std::future::Ready<()>>)
        .await;
    let elapsed = started.elapsed();
    let writes = run.writes().len();
    let verdict = run.judge(|_| true);
    println!("near checker: {}", verdict.summary(writes, elapsed));
    for example in &verdict.examples {
        println!("  {example}");
    }
    assert!(verdict.reads() >= plan.reads, "{} reads", verdict.reads());
    assert!(writes >= plan.writes, "{writes} writes");
    let failed: usize = verdict.instances.iter().map(|i| i.failed).sum();
    assert_eq!(failed, 0, "reads failed without any fault injected");
    assert_eq!(
        verdict.count(Class::SameInstance),
        0,
        "{:?}",
        verdict.examples
    );
    assert_eq!(
        verdict.count(Class::OtherSettled),
        0,
        "{:?}",
        verdict.examples
    );
    assert!(
        verdict.local_share() > 0.0,
        "L1 never served: the checker did not exercise it"
    );
}

/// Write bursts in the chaos run: from 50 ms to 200 ms of every 500 ms, so that instance 0's
/// L1 fills between bursts even over a delayed path (a write moves the generation, and every
/// page with it; under back-to-back writes L1 would rarely hold a page to be stale). Phases
/// last whole cycles, so each phase starts 50 ms before a burst: the black hole opens on a
/// warm L1 with no invalidation on its way, and writes begin just after, the case the
/// heartbeat bound is about. (Were the two simultaneous, the push of the burst's first write
/// would often pass before the hole opened and empty L1, leaving nothing to be stale.)
const BURSTS: Bursts = Bursts {
    cycle: Duration::from_millis(500),
    from: Duration::from_millis(50),
    to: Duration::from_millis(200),
};

/// Writes happen only between `from` and `to` of every `cycle` (counted from the start).
#[derive(Debug, Clone, Copy)]
struct Bursts {
    cycle: Duration,
    from: Duration,
    to: Duration,
}

impl Bursts {
    /// How long to wait before a write may start, `elapsed` into the run.
    fn wait(&self, elapsed: Duration) -> Duration {
        let cycle = self.cycle.as_nanos();
        let into = Duration::from_nanos((elapsed.as_nanos() % cycle) as u64);
        if into < self.from {
            self.from - into
        } else if into >= self.to {
            self.cycle - into + self.from
        } else {
            Duration::ZERO
        }
    }
}

/// Each reader's pause between reads in the chaos run (see [`Run::drive`]).
const READ_PAUSE: Duration = Duration::from_millis(2);

/// The chaos phases instance 0's Redis traffic goes through. `None`: back to passing, after
/// closing every connection the black hole left open (see below).
const PHASES: [(&str, Option<Behaviour>, Duration); 7] = [
    ("clear", Some(Behaviour::Pass), Duration::from_secs(1)),
    (
        "delay 50 ms",
        Some(Behaviour::Delay(Duration::from_millis(50))),
        Duration::from_secs(3),
    ),
    (
        "delay 100 ms",
        Some(Behaviour::Delay(Duration::from_millis(100))),
        Duration::from_secs(3),
    ),
    (
        "delay 150 ms",
        Some(Behaviour::Delay(Duration::from_millis(150))),
        Duration::from_secs(2),
    ),
    // Tracking comes back (its reconnect backs off up to 2 s) and L1 warms up.
    (
        "clear, warming",
        Some(Behaviour::Pass),
        Duration::from_secs(3),
    ),
    (
        "black hole",
        Some(Behaviour::BlackHole),
        Duration::from_secs(2),
    ),
    ("clear again", None, Duration::from_secs(2)),
];

/// The checker again, with instance 0 reaching Redis through a chaos proxy that delays its
/// traffic by 50, 100 and 150 ms each way, then black-holes it for 2 s: the staleness
/// instance 0 shows stays within the heartbeat bound; reads that fail in the black hole are
/// counted, not judged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_or_silent_tracking_stays_within_the_heartbeat_bound() {
    let plan = Plan::from_env();
    let stack = Stack::services(Mode::Forwarding, true, &[L1]);
    let proxy = ChaosProxy::start(SocketAddr::from(([127, 0, 0, 1], stack.redis.port))).await;
    // A timeout above the slowest delayed round trip (2 × 150 ms, plus a busy machine), so
    // instance 0's requests still succeed while delayed; its tracking connection keeps its
    // own bound (a PING unanswered within 250 ms drops L1).
    let mut fleet = vec![stack.instance(&[
        ("REDIS_CONNECTION_STRING", &proxy.redis_url()),
        ("REDIS_TIMEOUT_MS", "1000"),
    ])];
    fleet.extend((1..plan.instances).map(|_| stack.instance(&[])));
    // Writes go through the other instances only: a write on instance 0 during the black hole
    // is acknowledged with `x-cache-invalidation: pending` (documented: until the bump lands,
    // other instances may serve the previous page), which is not what this run measures.
    let writers_on = (1..plan.instances).collect();
    let run = Arc::new(Run::new(fleet, writers_on));
    // Timed by the phases: as many reads and writes as they allow.
    let timed = Plan {
        reads: 0,
        writes: usize::MAX,
        ..plan
    };
    let phases = async {
        for (n, (_, behaviour, lasts)) in PHASES.iter().enumerate() {
            match behaviour {
                Some(behaviour) => proxy.set(*behaviour),
                None => {
                    // The proxy drops the bytes a client sends into the black hole, which TCP
                    // never does: connections resumed after it would pair later replies with
                    // requests Redis never got. A partition that long ends with the
                    // connections reset, as here.
                    proxy.set(Behaviour::Pass);
                    proxy.cut_all();
                }
            }
            run.phase.store(n, Ordering::SeqCst);
            tokio::time::sleep(*lasts).await;
        }
    };
    let started = Instant::now();
    run.drive(timed, Some(BURSTS), Some(READ_PAUSE), Some(phases))
        .await;
    let elapsed = started.elapsed();
    let writes = run.writes().len();
    let verdict = run.judge(|_| true);
    println!(
        "near checker, chaos on #0: {}",
        verdict.summary(writes, elapsed)
    );
    for (n, (name, _, _)) in PHASES.iter().enumerate() {
        let phase = run.judge(|p| p == n);
        let zero = &phase.instances[0];
        println!(
            "  phase {name}: #0 {} reads, {:.1}% hit-local, {} failed, {} stale (worst lag \
             {:?}), slowest answer {:?}; all instances: (a) {} (b) {} (c) {}",
            zero.reads,
            zero.local_share(),
            zero.failed,
            zero.stale,
            zero.worst_lag,
            zero.slowest,
            phase.count(Class::SameInstance),
            phase.count(Class::OtherSettled),
            phase.count(Class::OtherRacing),
        );
    }
    for example in &verdict.examples {
        println!("  {example}");
    }
    // Instance 0 serves from L1 only while its last answered PING was sent < 250 ms ago, and
    // Redis answers that PING only after the pushes of every bump it had taken before: so a
    // stale L1 answer comes less than 250 ms (+ 1 ms of the handler's millisecond clock)
    // after the missed bump reached Redis, which precedes the writer's 200. The checker's
    // stamps only shorten the measured lag (the read is stamped before it is served, the 200
    // after it arrived), so the measurement cannot exceed that bound by scheduling delays.
    // The 50 ms of slack keep a rounding artifact from failing CI, while a broken bound still
    // fails: without the heartbeat rule, the 2 s black hole would show lags up to 2 s.
    let zero = &verdict.instances[0];
    assert!(
        zero.worst_lag <= HEARTBEAT_BOUND + Duration::from_millis(50),
        "instance 0 served a page {:?} after a write it missed: {:?}",
        zero.worst_lag,
        verdict.examples
    );
    // The other instances' Redis path was never disturbed: the plain run's rules hold there.
    for (n, other) in verdict.instances.iter().enumerate().skip(1) {
        assert_eq!(other.failed, 0, "#{n} failed reads");
        assert_eq!(other.count(Class::SameInstance), 0, "#{n}");
        assert_eq!(other.count(Class::OtherSettled), 0, "#{n}");
    }
    assert!(writes > 0 && verdict.reads() > 0);
    // Not vacuous: instance 0 served from L1 while its path was delayed or silent (except
    // over 150 ms each way, where no PING comes back within the bound: L1 stays off).
    let faulty = run.judge(|p| match PHASES[p].1 {
        Some(Behaviour::Delay(by)) => 2 * by < HEARTBEAT_BOUND,
        Some(Behaviour::BlackHole) => true,
        _ => false,
    });
    assert!(
        faulty.instances[0].local > 0,
        "instance 0 never served from L1 over a delayed or silent path"
    );
}
