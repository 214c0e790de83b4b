//! Row 5: the handler's peak resident set size (VmHWM) at readiness, idle after warm-up,
//! after the hit load and after the single-flight burst, sampled across rows 2 to 6.

use crate::procs::rss_kb;
use crate::report::{Row, f, verdict};
use crate::services::Handler;

/// kB samples of one handler's memory, taken as the scenarios before row 5 run on it.
#[derive(Default)]
pub struct Samples {
    hwm_ready: u64,
    hwm_idle: u64,
    rss_idle: u64,
    hwm_load: u64,
    hwm_after_burst: u64,
}

impl Samples {
    /// The first sample: right after the handler answered `GET /`.
    pub fn at_ready(h: &Handler) -> Self {
        Self {
            hwm_ready: rss_kb(h.pid()).0,
            ..Self::default()
        }
    }
    /// After warm-up and a second of rest.
    pub fn idle(&mut self, h: &Handler) {
        (self.hwm_idle, self.rss_idle) = rss_kb(h.pid());
    }
    /// After the hit load of rows 2.
    pub fn after_load(&mut self, h: &Handler) {
        self.hwm_load = rss_kb(h.pid()).0;
    }
    /// After the 200 concurrent requests of row 6.
    pub fn after_burst(&mut self, h: &Handler) {
        self.hwm_after_burst = rss_kb(h.pid()).0;
    }
}

/// Row 5 from the samples; the target is on the peak under the hit load.
pub fn rss(m: &Samples) -> Vec<Row> {
    let mb = |kb: u64| kb as f64 / 1024.0;
    vec![Row {
        id: "5",
        what: "peak RSS (VmHWM): at readiness / idle after warm-up / after the hit load".into(),
        result: format!(
            "{:.1} / {:.1} / **{:.1} MB** (after the 200-connection burst of row 6: {:.1} MB; idle VmRSS {:.1} MB)",
            mb(m.hwm_ready),
            mb(m.hwm_idle),
            mb(m.hwm_load),
            mb(m.hwm_after_burst),
            mb(m.rss_idle)
        ),
        p50: "n/a".into(),
        p99: "n/a".into(),
        ratio: f(m.hwm_load as f64 / m.hwm_idle.max(1) as f64, 2) + " (load / idle)",
        target: verdict(
            mb(m.hwm_load) <= 25.0,
            format!(
                "≤ 25 MB under the hit load; {:+.1} MB",
                mb(m.hwm_load) - 25.0
            ),
        ),
    }]
}
