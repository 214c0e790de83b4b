//! The load generators and single requests: `wrk` and `redis-benchmark` runs parsed into
//! numbers, one timed request through reqwest, and a raw HTTP/1.1 request for start-up timing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cosmos_cache_handler::routes::query::{pin_partition, spec_from_query_string};
use cosmos_cache_handler::store::QuerySpec;

use crate::Res;
use crate::procs::cpu_secs;
use crate::stats::ms;

/// What one `wrk` run reports: throughput, latency percentiles (ms), counts.
#[derive(Debug, Default, Clone)]
pub struct WrkOut {
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
    pub requests: u64,
    /// Non-2xx/3xx responses plus socket errors.
    pub bad: u64,
}

impl WrkOut {
    /// `"; N errors/non-2xx"` for a result cell, or nothing when every answer was good.
    pub fn errors_suffix(&self) -> String {
        if self.bad > 0 {
            format!("; {} errors/non-2xx", self.bad)
        } else {
            String::new()
        }
    }
}

/// `wrk -t2 -c<conns> -d<secs>s --latency` against `url`, with a Lua `script` if given.
pub fn wrk(conns: u32, secs: u32, url: &str, script: Option<&Path>) -> Res<WrkOut> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--latency",
    ])
    .args(["--timeout", "5s"]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    let out = cmd.arg(url).output().map_err(|e| format!("wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let latency = |label: &str| -> f64 {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(label))
            .and_then(|l| l.split_whitespace().nth(1))
            .map_or(f64::NAN, parse_wrk_duration)
    };
    let mut o = WrkOut {
        p50: latency("50%"),
        p99: latency("99%"),
        ..WrkOut::default()
    };
    for l in text.lines().map(str::trim) {
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            o.rps = v.trim().parse().unwrap_or(f64::NAN);
        } else if l.contains(" requests in ") {
            o.requests = l
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            o.bad += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = l.strip_prefix("Socket errors:") {
            o.bad += v
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Ok(o)
}

/// `180.00us`, `1.20ms`, `2.00s` → milliseconds.
fn parse_wrk_duration(v: &str) -> f64 {
    let (num, factor) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().map_or(f64::NAN, |x| x * factor)
}

/// One forwarded wrk run against `url`: the result and the CPU µs per request of the process
/// `pid` (the handler) during the run.
pub fn hit_run(pid: u32, conns: u32, secs: u32, url: &str) -> Res<(WrkOut, f64)> {
    let cpu0 = cpu_secs(pid);
    let o = wrk(conns, secs, url, None)?;
    let cpu = cpu_secs(pid) - cpu0;
    let per_request = cpu / o.requests.max(1) as f64 * 1e6;
    Ok((o, per_request))
}

/// `redis-benchmark ... -q` → (requests/s, p50 ms).
pub fn redis_benchmark(port: u16, extra: &[&str]) -> Res<(f64, f64)> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "get", "-c", "50", "-n", "200000", "-q"])
        .args(extra)
        .output()
        .map_err(|e| format!("redis-benchmark: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "GET: 123456.78 requests per second, p50=0.207 msec" (the last \r-separated update)
    let line = text
        .split(['\r', '\n'])
        .rfind(|l| l.contains("requests per second"))
        .ok_or_else(|| format!("unexpected redis-benchmark output {text:?}"))?;
    let rps = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let p50 = line
        .split("p50=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    Ok((rps, p50))
}

/// The median of three `redis-benchmark` runs, and the slowest and fastest run.
pub struct RedisMedian {
    pub rps: f64,
    pub p50: f64,
    pub min_rps: f64,
    pub max_rps: f64,
}

/// Three `redis-benchmark` runs, the median by throughput: its run-to-run spread on a shared
/// 2-core VM is ±15 %.
pub fn redis_benchmark_median(port: u16, extra: &[&str]) -> Res<RedisMedian> {
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(redis_benchmark(port, extra)?);
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (rps, p50) = runs[1];
    Ok(RedisMedian {
        rps,
        p50,
        min_rps: runs[0].0,
        max_rps: runs[2].0,
    })
}

/// One request through reqwest, as the handler answered it.
#[derive(Debug)]
pub struct Timed {
    /// HTTP status (0: no response).
    pub status: u16,
    /// The `x-cache` header ("" without one).
    pub cache: String,
    /// The `x-ms-request-charge` header (0 without one).
    pub ru: f64,
    /// Latency to the end of the body, ms.
    pub ms: f64,
    /// Bytes of the body (0 without a response).
    pub body_len: usize,
}

/// Sends `request` and times it to the end of its body.
pub async fn timed(request: reqwest::RequestBuilder) -> Timed {
    timed_since(Instant::now(), request).await
}

/// Sends `request`; its latency counts from `started`.
async fn timed_since(started: Instant, request: reqwest::RequestBuilder) -> Timed {
    match request.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let cache = header(r.headers(), "x-cache");
            let ru = header(r.headers(), "x-ms-request-charge")
                .parse()
                .unwrap_or(0.0);
            let body_len = r.bytes().await.map_or(0, |b| b.len());
            Timed {
                status,
                cache,
                ru,
                ms: ms(started.elapsed()),
                body_len,
            }
        }
        Err(_) => Timed {
            status: 0,
            cache: String::new(),
            ru: 0.0,
            ms: ms(started.elapsed()),
            body_len: 0,
        },
    }
}

/// One timed `GET url`, the clock started before the request is built (URL parsing included,
/// as in every latency this benchmark has reported).
pub async fn timed_get(http: &reqwest::Client, url: &str) -> Timed {
    let started = Instant::now();
    timed_since(started, http.get(url)).await
}

/// The length of `GET url`'s body.
pub async fn body_len(http: &reqwest::Client, url: &str) -> Res<usize> {
    let body = http.get(url).send().await.map_err(|e| e.to_string())?;
    Ok(body.bytes().await.map_err(|e| e.to_string())?.len())
}

fn header(h: &reqwest::header::HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// `<base>/api/query?<pairs, form-encoded>`.
pub fn query_url(base: &str, pairs: &[(&str, &str)]) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    format!("{base}/api/query?{q}")
}

/// The query the handler builds for `?city=<city>&<pk_field>=<pk>`, pinned to partition `pk`
/// at `pk_path`: what the in-process bare-SDK call runs, so both sides do the same work.
pub fn city_spec(city: &str, pk_field: &str, pk: &str, pk_path: &str) -> Res<QuerySpec> {
    let q = vec![
        ("city".to_string(), city.to_string()),
        (pk_field.to_string(), pk.to_string()),
    ];
    let mut s = spec_from_query_string(&q).map_err(|e| format!("{e:?}"))?;
    pin_partition(&mut s, pk_path);
    Ok(s)
}

/// A reply to a raw request: its status and its head, lower-cased.
pub struct RawReply {
    pub status: u16,
    pub head: String,
}

/// A minimal blocking HTTP/1.1 GET (for start-up timing: no client library in the way).
pub fn raw_get(port: u16, path: &str) -> Option<RawReply> {
    raw_request(port, "GET", path, "")
}

/// A minimal blocking HTTP/1.1 request with a JSON `body` ("" for none); `None` on any failure.
pub fn raw_request(port: u16, method: &str, path: &str, body: &str) -> Option<RawReply> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let extra = if body.is_empty() {
        String::new()
    } else {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Connection: close\r\n\r\n{body}"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, _) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some(RawReply {
        status,
        head: head.to_ascii_lowercase(),
    })
}
