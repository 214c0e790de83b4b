//! The checker's verdict, computed after the run from two logs (acknowledged writes, reads),
//! so that no read is judged before every write acknowledged before it started is logged.
//!
//! A read is **stale** when a city on its page shows an older version than a write that was
//! acknowledged (its 200 had arrived) before the read started. Writes to one city are
//! serialized by the checker, so per city the acknowledgement order is the version order, and
//! the writes a read missed for that city are the ones above the version it saw that were
//! acknowledged before it started; the oldest of them decides the read's lag.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Reads on another instance that start this long after the writer's 200 must see the write
/// (the near cache's invalidation push has had time to arrive).
pub const SETTLE: Duration = Duration::from_millis(10);

/// One acknowledged write.
#[derive(Debug, Clone)]
pub struct Write {
    /// Index of the city in the checker's list.
    pub city: usize,
    /// The version written (the population, above every real population).
    pub version: u64,
    /// When the writer received the 200.
    pub acked: Instant,
    /// The instance that served the write.
    pub by: usize,
}

/// One read and what its page showed.
#[derive(Debug, Clone)]
pub struct Read {
    /// When the request was issued.
    pub started: Instant,
    /// The instance that served it.
    pub by: usize,
    /// `x-cache` (`hit-local`, `hit`, `miss`, `bypass`), or the status for a failed read.
    pub cache: String,
    /// The version each city of the page's state showed (0 when the page left it out).
    /// Empty for a failed read, which is counted, not judged.
    pub seen: Vec<(usize, u64)>,
    /// Whether the answer was a 200.
    pub ok: bool,
    /// How long the answer took.
    pub took: Duration,
}

/// How a stale read relates to the write it missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// (a) The reader is the instance that wrote: must never happen.
    SameInstance,
    /// (b) Another instance, the read started ≥ [`SETTLE`] after the 200: must never happen.
    OtherSettled,
    /// (c) Another instance, the read started < [`SETTLE`] after the 200: reported.
    OtherRacing,
}

/// Counters of one instance.
#[derive(Debug, Default, Clone)]
pub struct PerInstance {
    /// Reads served (200).
    pub reads: usize,
    /// Of those, `x-cache: hit-local`.
    pub local: usize,
    /// Reads that failed (not 200).
    pub failed: usize,
    /// Stale reads of any class.
    pub stale: usize,
    /// Stale reads per class.
    pub classes: BTreeMap<Class, usize>,
    /// The longest lag of a stale read on this instance.
    pub worst_lag: Duration,
    /// The slowest answer, failed or not.
    pub slowest: Duration,
}

impl PerInstance {
    /// Stale reads of `class` on this instance.
    pub fn count(&self, class: Class) -> usize {
        self.classes.get(&class).copied().unwrap_or(0)
    }

    /// The share of its reads served from L1 (percent).
    pub fn local_share(&self) -> f64 {
        percent(self.local, self.reads)
    }
}

/// The verdict of a run.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Stale reads per class, with the worst lag of each.
    pub stale: BTreeMap<Class, (usize, Duration)>,
    /// Per instance.
    pub instances: Vec<PerInstance>,
    /// A few stale reads, for the failure message.
    pub examples: Vec<String>,
}

impl Verdict {
    /// Stale reads of `class`.
    pub fn count(&self, class: Class) -> usize {
        self.stale.get(&class).map_or(0, |(n, _)| *n)
    }

    /// The worst lag of `class`.
    pub fn worst(&self, class: Class) -> Duration {
        self.stale
            .get(&class)
            .map_or(Duration::ZERO, |(_, lag)| *lag)
    }

    /// Reads served, of all instances.
    pub fn reads(&self) -> usize {
        self.instances.iter().map(|i| i.reads).sum()
    }

    /// The share of reads served from L1, of all instances (percent).
    pub fn local_share(&self) -> f64 {
        percent(self.instances.iter().map(|i| i.local).sum(), self.reads())
    }

    /// One paragraph: reads, hit-local share per instance, stale reads per class.
    pub fn summary(&self, writes: usize, elapsed: Duration) -> String {
        let per_instance: Vec<String> = self
            .instances
            .iter()
            .enumerate()
            .map(|(n, i)| {
                format!(
                    "#{n}: {} reads, {:.1}% hit-local, {} failed, {} stale (worst lag {:?})",
                    i.reads,
                    i.local_share(),
                    i.failed,
                    i.stale,
                    i.worst_lag
                )
            })
            .collect();
        format!(
            "{} reads and {writes} acknowledged writes on {} instances in {elapsed:.1?}, \
             {:.1}% of reads served from L1 ({}). Stale reads: (a) same instance as the \
             writer: {} (worst lag {:?}); (b) another instance, started ≥ {SETTLE:?} after the \
             writer's 200: {} (worst lag {:?}); (c) another instance, started < {SETTLE:?} \
             after it: {} (worst lag {:?}).",
            self.reads(),
            self.instances.len(),
            self.local_share(),
            per_instance.join("; "),
            self.count(Class::SameInstance),
            self.worst(Class::SameInstance),
            self.count(Class::OtherSettled),
            self.worst(Class::OtherSettled),
            self.count(Class::OtherRacing),
            self.worst(Class::OtherRacing),
        )
    }
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// Judges every read against the acknowledged writes.
pub fn judge(cities: usize, instances: usize, writes: &[Write], reads: &[Read]) -> Verdict {
    // Per city, in version order (which is acknowledgement order: writes to a city are
    // serialized).
    let mut by_city: Vec<Vec<&Write>> = vec![Vec::new(); cities];
    for w in writes {
        by_city[w.city].push(w);
    }
    for list in &mut by_city {
        list.sort_by_key(|w| w.version);
    }
    let mut verdict = Verdict {
        instances: vec![PerInstance::default(); instances],
        ..Verdict::default()
    };
    for read in reads {
        let counters = &mut verdict.instances[read.by];
        counters.slowest = counters.slowest.max(read.took);
        if !read.ok {
            counters.failed += 1;
            continue;
        }
        counters.reads += 1;
        if read.cache == "hit-local" {
            counters.local += 1;
        }
        // The oldest missed acknowledged write on the page, and whether any missed write was
        // the reader's own.
        let mut oldest: Option<&Write> = None;
        let mut own = false;
        for &(city, seen) in &read.seen {
            let list = &by_city[city];
            let first_newer = list.partition_point(|w| w.version <= seen);
            for w in list[first_newer..]
                .iter()
                .take_while(|w| w.acked < read.started)
            {
                own |= w.by == read.by;
                if oldest.is_none_or(|o| w.acked < o.acked) {
                    oldest = Some(w);
                }
            }
        }
        let Some(missed) = oldest else { continue };
        let lag = read.started - missed.acked;
        let class = if own {
            Class::SameInstance
        } else if lag >= SETTLE {
            Class::OtherSettled
        } else {
            Class::OtherRacing
        };
        let entry = verdict.stale.entry(class).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(lag);
        let counters = &mut verdict.instances[read.by];
        counters.stale += 1;
        *counters.classes.entry(class).or_default() += 1;
        counters.worst_lag = counters.worst_lag.max(lag);
        if verdict.examples.len() < 10 {
            verdict.examples.push(format!(
                "{class:?}: read on #{} ({}) started {lag:?} after the 200 of version {} of \
                 city #{} written on #{}",
                read.by, read.cache, missed.version, missed.city, missed.by
            ));
        }
    }
    verdict
}

/// The verdict on hand-made logs: each class, and the reads that are not stale.
#[test]
fn classifies_missed_writes() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let write = |city, version, acked, by| Write {
        city,
        version,
        acked: at(acked),
        by,
    };
    // City 0: v1 on #0 acked at 100 ms, v2 on #1 at 200 ms. City 1: v3 on #1 at 300 ms.
    let writes = [
        write(0, 1, 100, 0),
        write(0, 2, 200, 1),
        write(1, 3, 300, 1),
    ];
    let read = |started, by, seen: &[(usize, u64)]| Read {
        started: at(started),
        by,
        cache: "hit-local".into(),
        seen: seen.to_vec(),
        ok: true,
        took: Duration::ZERO,
    };
    let reads = [
        // Misses #0's own v1 (and #1's v2): same instance, lag from the oldest (v1).
        read(250, 0, &[(0, 0), (1, 0)]),
        // Sees v1, misses v2 15 ms after its 200 on another instance: settled.
        read(215, 2, &[(0, 1), (1, 0)]),
        // Misses v3 4 ms after its 200: racing.
        read(304, 2, &[(0, 2), (1, 0)]),
        // Up to date, or started before the 200 of what it missed: not stale.
        read(400, 2, &[(0, 2), (1, 3)]),
        read(299, 2, &[(0, 2), (1, 0)]),
        // Newer than anything acknowledged (a write in flight): not stale.
        read(150, 2, &[(0, 2), (1, 0)]),
    ];
    let verdict = judge(2, 3, &writes, &reads);
    assert_eq!(verdict.count(Class::SameInstance), 1);
    assert_eq!(
        verdict.worst(Class::SameInstance),
        Duration::from_millis(150)
    );
    assert_eq!(verdict.count(Class::OtherSettled), 1);
    assert_eq!(
        verdict.worst(Class::OtherSettled),
        Duration::from_millis(15)
    );
    assert_eq!(verdict.count(Class::OtherRacing), 1);
    assert_eq!(verdict.worst(Class::OtherRacing), Duration::from_millis(4));
    assert_eq!(verdict.instances[2].stale, 2);
    assert_eq!(verdict.reads(), 6);
}
