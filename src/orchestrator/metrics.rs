//! Request metrics (design §6): the Prometheus series of the whole process, and the
//! per-principal counts behind `GET /v1/metrics/summary`. No axum: the HTTP layer hands in
//! each answered request as a [`Served`], labelled by its route template, never its raw path.
//!
//! Prometheus: `sandboxd_http_requests_total{route,method,status}`,
//! `sandboxd_http_request_duration_seconds{route,method}` (histogram),
//! `sandboxd_sandboxes{state}` (set at each scrape) and
//! `sandboxd_sdk_create_duration_ms{sdk,success}` (histogram of the SDKs' own create
//! timings). The recorder is process-wide (installed once, so `metrics::counter!` works from
//! anywhere); the exporter's own listener is not built, `GET /metrics` renders it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::wire::time::{format_ms, now_ms};
use crate::wire::usage::{ExecutionCounts, MetricsSummary};

const REQUESTS: &str = "sandboxd_http_requests_total";
const DURATION: &str = "sandboxd_http_request_duration_seconds";
const SANDBOXES: &str = "sandboxd_sandboxes";
const SDK_CREATE: &str = "sandboxd_sdk_create_duration_ms";

/// The contract's sandbox states: each scrape sets every one, so a state that empties reads 0.
const STATES: [&str; 7] = [
    "Pending",
    "Running",
    "Paused",
    "Stopping",
    "Terminated",
    "Failed",
    "Unknown",
];

/// Upper bounds (ms) of the summary's latency buckets: from 0.05 ms, each 20 % above the last,
/// up to about 8 minutes; a p95 read from them is at most 20 % high.
fn bounds_ms() -> &'static [f64] {
    static BOUNDS: OnceLock<Vec<f64>> = OnceLock::new();
    BOUNDS.get_or_init(|| {
        std::iter::successors(Some(0.05_f64), |b| Some(b * 1.2))
            .take_while(|b| *b < 500_000.0)
            .collect()
    })
}

/// The process-wide recorder, installed on first use.
fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let seconds = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let ms = [
            100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0, 10_000.0, 30_000.0, 60_000.0, 120_000.0,
        ];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DURATION.into()), &seconds)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(SDK_CREATE.into()), &ms))
            .expect("the bucket lists are not empty");
        let handle = match builder.install_recorder() {
            Ok(handle) => handle,
            Err(e) => {
                // Only when something else installed a recorder first: render an empty one.
                tracing::warn!(error = %e, "cannot install the metrics recorder; /metrics stays empty");
                PrometheusBuilder::new().build_recorder().handle()
            }
        };
        metrics::describe_counter!(
            REQUESTS,
            "API requests answered, by route template, method and status"
        );
        metrics::describe_histogram!(DURATION, metrics::Unit::Seconds, "Time to answer an API request");
        metrics::describe_gauge!(SANDBOXES, "Sandboxes by contract state, as of the scrape");
        metrics::describe_histogram!(
            SDK_CREATE,
            "Create-to-ready time the SDKs report (POST /v1/metrics/events)"
        );
        handle
    })
}

/// One answered request.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    /// The matched route template (`/v1/sandboxes/{id}`), or `unmatched`.
    pub route: &'a str,
    /// The method, one of the standard ones or `OTHER`.
    pub method: &'a str,
    /// The status.
    pub status: u16,
    /// Time to answer.
    pub elapsed: Duration,
    /// Whom the summary attributes it to: the principal of an API request, `None` for the
    /// public routes, the proxy data plane and requests that never reached a principal.
    pub principal: Option<&'a str>,
}

/// One principal's counts.
#[derive(Debug, Clone)]
struct Usage {
    total: u64,
    ok: u64,
    rate_limited: u64,
    sum_ms: f64,
    max_ms: f64,
    last_at: i64,
    buckets: Vec<u64>,
}

impl Usage {
    fn new() -> Self {
        Self {
            total: 0,
            ok: 0,
            rate_limited: 0,
            sum_ms: 0.0,
            max_ms: 0.0,
            last_at: 0,
            buckets: vec![0; bounds_ms().len() + 1],
        }
    }

    fn add(&mut self, status: u16, ms: f64, at: i64) {
        self.total += 1;
        self.ok += u64::from(status < 400);
        self.rate_limited += u64::from(status == 429);
        self.sum_ms += ms;
        self.max_ms = self.max_ms.max(ms);
        self.last_at = self.last_at.max(at);
        let i = bounds_ms().partition_point(|b| *b < ms);
        self.buckets[i] += 1;
    }

    fn merge(&mut self, other: &Usage) {
        self.total += other.total;
        self.ok += other.ok;
        self.rate_limited += other.rate_limited;
        self.sum_ms += other.sum_ms;
        self.max_ms = self.max_ms.max(other.max_ms);
        self.last_at = self.last_at.max(other.last_at);
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
    }

    /// The upper bound of the bucket holding the 95th percentile, capped by the slowest.
    fn p95_ms(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = (self.total * 95).div_ceil(100);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bounds_ms()
                    .get(i)
                    .copied()
                    .unwrap_or(f64::INFINITY)
                    .min(self.max_ms);
            }
        }
        self.max_ms
    }
}

/// Which principals a summary covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// One principal's own.
    Own(&'a str),
    /// Everyone's.
    All,
}

/// The request metrics of one sandboxd.
pub struct Metrics {
    prometheus: &'static PrometheusHandle,
    since: i64,
    usage: Mutex<HashMap<String, Usage>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Counting from now.
    pub fn new() -> Self {
        Self {
            prometheus: prometheus(),
            since: now_ms(),
            usage: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one answered request.
    pub fn record(&self, r: Served<'_>) {
        let labels = [
            ("route", r.route.to_owned()),
            ("method", r.method.to_owned()),
            ("status", r.status.to_string()),
        ];
        metrics::counter!(REQUESTS, &labels).increment(1);
        metrics::histogram!(DURATION, &labels[..2]).record(r.elapsed.as_secs_f64());
        if let Some(principal) = r.principal {
            let ms = r.elapsed.as_secs_f64() * 1e3;
            let mut usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
            match usage.get_mut(principal) {
                Some(u) => u.add(r.status, ms, now_ms()),
                None => {
                    let mut u = Usage::new();
                    u.add(r.status, ms, now_ms());
                    usage.insert(principal.to_owned(), u);
                }
            }
        }
    }

    /// The summary of `scope`, with the sandbox counts the caller may see.
    pub fn summary(&self, scope: Scope<'_>, sandboxes: &BTreeMap<String, u64>) -> MetricsSummary {
        let mut sum = Usage::new();
        {
            let usage = self.usage.lock().unwrap_or_else(|e| e.into_inner());
            match scope {
                Scope::Own(id) => {
                    if let Some(u) = usage.get(id) {
                        sum.merge(u);
                    }
                }
                Scope::All => usage.values().for_each(|u| sum.merge(u)),
            }
        }
        let round = |ms: f64| (ms * 1000.0).round() / 1000.0;
        let count = |state: &str| sandboxes.get(state).copied().unwrap_or(0);
        MetricsSummary {
            scope: match scope {
                Scope::Own(_) => "self",
                Scope::All => "all",
            }
            .to_owned(),
            since: format_ms(self.since),
            last_updated: format_ms(if sum.total == 0 { self.since } else { sum.last_at }),
            total_requests: sum.total,
            successful_requests: sum.ok,
            failed_requests: sum.total - sum.ok,
            rate_limited_requests: sum.rate_limited,
            average_response_time_ms: if sum.total == 0 {
                0.0
            } else {
                round(sum.sum_ms / sum.total as f64)
            },
            p95_response_time_ms: round(sum.p95_ms()),
            total_execution_time_ms: 0,
            executions: ExecutionCounts::default(),
            active_sandboxes: count("Running"),
            paused_sandboxes: count("Paused"),
        }
    }

    /// Sets `sandboxd_sandboxes{state}` (every contract state, zeros included).
    pub fn set_sandboxes(&self, by_state: &BTreeMap<String, u64>) {
        for state in STATES {
            let n = by_state.get(state).copied().unwrap_or(0);
            metrics::gauge!(SANDBOXES, "state" => state).set(n as f64);
        }
    }

    /// Records an SDK's own create timing (`POST /v1/metrics/events`).
    pub fn record_sdk_create(&self, sdk: &str, success: bool, duration_ms: u64) {
        metrics::histogram!(SDK_CREATE, "sdk" => sdk.to_owned(), "success" => if success { "true" } else { "false" })
            .record(duration_ms as f64);
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        self.prometheus.render()
    }

    /// Drains histogram samples into their buckets and drops idle series (the exporter's
    /// listener would do this; sandboxd has none, so its housekeeping task calls this).
    pub fn upkeep(&self) {
        self.prometheus.run_upkeep();
    }
}

/// The SDK of a `User-Agent` such as `OpenSandbox-Python-SDK/1.1.1`: `python/1.1.1`, lower
/// case; anything else is `unknown` (a label must not take arbitrary client text).
pub fn sdk_of(user_agent: &str) -> String {
    let parsed = user_agent.split_whitespace().find_map(|word| {
        let (name, version) = word.split_once('/')?;
        let lang = name.strip_prefix("OpenSandbox-")?.strip_suffix("-SDK")?;
        let word_chars = |s: &str, extra: &[char]| {
            !s.is_empty()
                && s.len() <= 32
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || extra.contains(&c))
        };
        (word_chars(lang, &[]) && word_chars(version, &['.', '-', '+']))
            .then(|| format!("{}/{version}", lang.to_ascii_lowercase()))
    });
    parsed.unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(principal: &str, status: u16, ms: u64) -> Served<'_> {
        Served {
            route: "/v1/sandboxes/{id}",
            method: "GET",
            status,
            elapsed: Duration::from_millis(ms),
            principal: Some(principal),
        }
    }

    #[test]
    fn the_summary_counts_each_principal_apart_and_all_together() {
        let m = Metrics::new();
        for _ in 0..5 {
            m.record(served("a", 200, 2));
        }
        m.record(served("a", 404, 2));
        m.record(served("a", 404, 2));
        m.record(served("a", 429, 1));
        m.record(served("b", 201, 100));
        m.record(Served {
            principal: None,
            ..served("x", 401, 1)
        });
        let none = BTreeMap::new();
        let a = m.summary(Scope::Own("a"), &none);
        assert_eq!(
            (
                a.total_requests,
                a.successful_requests,
                a.failed_requests,
                a.rate_limited_requests
            ),
            (8, 5, 3, 1)
        );
        assert_eq!(a.scope, "self");
        assert!((a.average_response_time_ms - 1.875).abs() < 1e-9, "{a:?}");
        assert!((2.0..=2.4).contains(&a.p95_response_time_ms), "{a:?}");
        let all = m.summary(Scope::All, &none);
        assert_eq!(
            (all.total_requests, all.successful_requests),
            (9, 6),
            "the 401 had no principal"
        );
        assert_eq!(all.p95_response_time_ms, 100.0, "capped by the slowest");
        let nobody = m.summary(Scope::Own("c"), &none);
        assert_eq!((nobody.total_requests, nobody.average_response_time_ms), (0, 0.0));
        assert_eq!(nobody.last_updated, nobody.since);
    }

    #[test]
    fn p95_is_within_twenty_percent() {
        let mut u = Usage::new();
        for ms in 1..=1000 {
            u.add(200, f64::from(ms), 0);
        }
        let p95 = u.p95_ms();
        assert!((950.0..=950.0 * 1.2).contains(&p95), "{p95}");
    }

    #[test]
    fn sandbox_counts_come_from_the_states_given() {
        let m = Metrics::new();
        let states = BTreeMap::from([("Running".to_owned(), 3), ("Paused".to_owned(), 1)]);
        let s = m.summary(Scope::All, &states);
        assert_eq!((s.active_sandboxes, s.paused_sandboxes), (3, 1));
    }

    #[test]
    fn sdk_names_come_only_from_the_sdk_user_agent_form() {
        assert_eq!(sdk_of("OpenSandbox-Python-SDK/1.1.1"), "python/1.1.1");
        assert_eq!(sdk_of("OpenSandbox-Go-SDK/0.1.0 extra"), "go/0.1.0");
        assert_eq!(sdk_of("python-httpx/0.28.1"), "unknown");
        assert_eq!(sdk_of("OpenSandbox-Py thon-SDK/1"), "unknown");
        assert_eq!(sdk_of("OpenSandbox-Python-SDK/1.1.1\"}"), "unknown");
        assert_eq!(sdk_of(""), "unknown");
    }
}
