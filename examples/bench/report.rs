//! The result table (rows printed as they come, then as markdown), its cell formats, the
//! machine description and the CPU accounting of the whole run.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use crate::Res;
use crate::procs::{cpu_secs, machine_busy_secs, own_cpu_secs, rss_kb, sh};
use crate::services::Services;

/// One row of the table.
pub struct Row {
    /// The measurement's number in `docs/benchmarks.md` (`1`, `2x`, `3a`, …).
    pub id: &'static str,
    pub what: String,
    pub result: String,
    pub p50: String,
    pub p99: String,
    pub ratio: String,
    /// The target and whether it was met, or `-`.
    pub target: String,
}

impl Row {
    fn cells(&self) -> [&str; 7] {
        [
            self.id,
            &self.what,
            &self.result,
            &self.p50,
            &self.p99,
            &self.ratio,
            &self.target,
        ]
    }
}

/// The table's rows and the notes under it.
#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    /// Appends a scenario's rows, printing each (progress while the run goes on).
    pub fn add(&mut self, rows: Vec<Row>) {
        for r in rows {
            println!("  {}", r.cells().join(" | "));
            self.rows.push(r);
        }
    }

    pub fn note(&mut self, n: String) {
        println!("  note: {n}");
        self.notes.push(n);
    }

    fn markdown(&self) -> String {
        let mut s = String::from(
            "| # | measurement | result | p50 | p99 | ratio to reference | target |\n|---|---|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            let _ = writeln!(s, "| {} |", r.cells().join(" | "));
        }
        s
    }
}

impl Report {
    /// Prints the whole report (machine, table, notes, profile) and writes it to
    /// `<run_dir>/results.md`.
    pub fn write(&self, machine: &str, profile: &str, run_dir: &Path) -> Res<()> {
        let mut out = String::new();
        let _ = writeln!(out, "## Machine\n\n{machine}");
        let _ = writeln!(out, "## Results\n\n{}", self.markdown());
        for n in &self.notes {
            let _ = writeln!(out, "- {n}");
        }
        if !profile.is_empty() {
            let _ = writeln!(out, "\n## Profile of the hit path\n\n{profile}");
        }
        std::fs::write(run_dir.join("results.md"), &out).map_err(|e| e.to_string())?;
        println!("\n{out}");
        println!("(also written to .run/bench/results.md)");
        Ok(())
    }
}

/// `x` with `digits` decimals, or `n/a`.
pub fn f(x: f64, digits: usize) -> String {
    if x.is_nan() {
        "n/a".into()
    } else {
        format!("{x:.digits$}")
    }
}

/// Milliseconds with the decimals that matter at their size: `0.412 ms`, `1.20 ms`, `312 ms`.
pub fn msf(x: f64) -> String {
    if x.is_nan() {
        "n/a".into()
    } else if x < 1.0 {
        format!("{x:.3} ms")
    } else if x < 100.0 {
        format!("{x:.2} ms")
    } else {
        format!("{x:.0} ms")
    }
}

/// A signed difference in milliseconds: `+0.412 ms`, `-1.20 ms`.
pub fn smsf(x: f64) -> String {
    if x.is_nan() {
        "n/a".into()
    } else if x < 0.0 {
        format!("-{}", msf(-x))
    } else {
        format!("+{}", msf(x))
    }
}

/// The target cell: `met (how)` or `**missed** (how)`.
pub fn verdict(met: bool, how: String) -> String {
    if met {
        format!("met ({how})")
    } else {
        format!("**missed** ({how})")
    }
}

/// The machine section: hardware, versions, and what else was running at the start.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo");
    let mut s = String::new();
    let _ = writeln!(s, "- nproc: {}", sh("nproc"));
    let _ = writeln!(s, "- CPU: {cpu} (`/proc/cpuinfo` model name)");
    let _ = writeln!(s, "- memory: {mem}");
    let _ = writeln!(s, "- kernel: {}", sh("uname -sr"));
    let _ = writeln!(s, "- rustc: {}", sh("rustc --version"));
    let _ = writeln!(
        s,
        "- redis-server: {}",
        sh("redis-server --version | cut -d' ' -f3")
    );
    let _ = writeln!(s, "- node: {}", sh("node --version"));
    let _ = writeln!(
        s,
        "- wrk: {}",
        sh("wrk --version 2>&1 | head -1 | cut -d' ' -f1-2")
    );
    let _ = writeln!(
        s,
        "- load average at start: {}",
        sh("cut -d' ' -f1-3 /proc/loadavg")
    );
    let _ = writeln!(
        s,
        "- other processes using CPU or > 50 MB at start:\n```\n{}\n```",
        sh(
            "ps -eo pid,pcpu,rss,args --sort=-pcpu | awk 'NR==1 || $2>0.5 || $3>51200' | cut -c1-110 | head -15"
        )
    );
    s
}

/// The run's start: wall clock, the machine's busy CPU time and this process's CPU time, so
/// the end can tell how much CPU other processes took (the cores are shared).
pub struct RunClock {
    started: Instant,
    busy0: f64,
    own0: f64,
}

impl RunClock {
    pub fn start() -> Self {
        Self {
            started: Instant::now(),
            busy0: machine_busy_secs(),
            own0: own_cpu_secs(),
        }
    }

    pub fn elapsed_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The notes under the table: the Cosmos server's peak RSS, the load average, the CPU
    /// accounting (busy CPU-seconds, this benchmark's share — this process, its children, Redis
    /// and the Cosmos server — and everybody else's) and the run's duration.
    pub fn closing_notes(&self, svc: &Services) -> Vec<String> {
        let (cosmos_hwm, _) = rss_kb(svc.cosmos_pid());
        let wall = self.elapsed_secs();
        let busy = machine_busy_secs() - self.busy0;
        let ours =
            own_cpu_secs() - self.own0 + cpu_secs(svc.cosmos_pid()) + cpu_secs(svc.redis_pid());
        let others = (busy - ours).max(0.0);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        vec![
            format!(
                "local Cosmos server (node) peak RSS with all containers loaded: {:.0} MB",
                cosmos_hwm as f64 / 1024.0
            ),
            format!(
                "load average at the end: {}",
                sh("cut -d' ' -f1-3 /proc/loadavg")
            ),
            format!(
                "CPU during the run: {busy:.0} CPU-s busy of {:.0} available; this benchmark's \
                 processes {ours:.0} CPU-s; **other processes {others:.0} CPU-s ({:.0} % of the \
                 machine)**",
                wall * cores,
                others / (wall * cores) * 100.0
            ),
            format!("whole run (after the build): {:.0} s", self.elapsed_secs()),
        ]
    }
}
