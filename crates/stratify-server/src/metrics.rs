//! Prometheus metrics in the text exposition format, kept by hand: a few
//! counters and histograms behind one mutex each, labelled by the matched
//! route template (never the raw path, so cardinality stays bounded).

use crate::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Instant;

/// Latency bucket bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<(String, String), Histogram>>,
    ingest: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Metrics {
    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default() += 1;
        let mut latency = self.latency.lock();
        let h = latency
            .entry((method.to_owned(), route.to_owned()))
            .or_default();
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            h.counts[i] += 1;
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// Counts ingested items by source and outcome (accepted, duplicate, rejected).
    pub fn ingested(&self, source: &'static str, outcome: &'static str, n: u64) {
        if n > 0 {
            *self.ingest.lock().entry((source, outcome)).or_default() += n;
        }
    }

    pub fn render(&self, uptime_seconds: f64) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str(
            "# HELP stratify_http_requests_total HTTP requests by method, route and status.\n",
        );
        out.push_str("# TYPE stratify_http_requests_total counter\n");
        for ((method, route, status), n) in self.requests.lock().iter() {
            let _ = writeln!(out, "stratify_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}", escape(route));
        }
        out.push_str("# HELP stratify_http_request_duration_seconds HTTP request latency by method and route.\n");
        out.push_str("# TYPE stratify_http_request_duration_seconds histogram\n");
        for ((method, route), h) in self.latency.lock().iter() {
            let labels = format!("method=\"{method}\",route=\"{}\"", escape(route));
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                cumulative += n;
                let _ = writeln!(out, "stratify_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(
                out,
                "stratify_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "stratify_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "stratify_http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        out.push_str("# HELP stratify_ingest_events_total Events received by this process, by source and outcome.\n");
        out.push_str("# TYPE stratify_ingest_events_total counter\n");
        for ((source, outcome), n) in self.ingest.lock().iter() {
            let _ = writeln!(
                out,
                "stratify_ingest_events_total{{source=\"{source}\",outcome=\"{outcome}\"}} {n}"
            );
        }
        out.push_str("# HELP stratify_uptime_seconds Seconds since the server started.\n");
        out.push_str("# TYPE stratify_uptime_seconds gauge\n");
        let _ = writeln!(out, "stratify_uptime_seconds {uptime_seconds}");
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let response = next.run(req).await;
    state.metrics.observe(
        &method,
        &route,
        response.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    response
}

pub async fn render(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = state.metrics.render(state.started.elapsed().as_secs_f64());
    live_metrics(&mut body, state.engine.live());
    exposure_metrics(&mut body, &state.engine.serving.exposure_counts());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// First exposures by experiment key and variant, as they happen.
fn exposure_metrics(
    out: &mut String,
    counts: &[stratify_engine::experiments::assign::ExposureCount],
) {
    use std::fmt::Write;
    out.push_str("# HELP stratify_exposures_total First exposures (new sticky assignments) made by this process, by experiment and variant.\n");
    out.push_str("# TYPE stratify_exposures_total counter\n");
    for c in counts {
        let _ = writeln!(
            out,
            "stratify_exposures_total{{experiment=\"{}\",variant=\"{}\"}} {}",
            escape(&c.experiment_key),
            escape(&c.variant),
            c.count
        );
    }
}

/// The live engine's gauges and counters.
fn live_metrics(out: &mut String, live: &stratify_engine::live::Live) {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let stats = live.stats();
    let rows: [(&str, &str, &str, i64); 8] = [
        (
            "stratify_live_lag_events",
            "gauge",
            "Committed events not yet applied to memberships (writers wait past 20000).",
            live.lag() as i64,
        ),
        (
            "stratify_live_users",
            "gauge",
            "Users in live state.",
            stats.users.load(Relaxed) as i64,
        ),
        (
            "stratify_live_deadlines_pending",
            "gauge",
            "Pending (user, segment) deadlines.",
            stats.deadlines.load(Relaxed) as i64,
        ),
        (
            "stratify_live_deadlines_fired_total",
            "counter",
            "Deadlines fired.",
            stats.fired.load(Relaxed) as i64,
        ),
        (
            "stratify_live_changes_total",
            "counter",
            "Membership changes committed since start.",
            stats.changes.load(Relaxed) as i64,
        ),
        (
            "stratify_live_truncated_users",
            "gauge",
            "Users over the live event limit (oldest events dropped from live state).",
            stats.truncated_users.load(Relaxed) as i64,
        ),
        (
            "stratify_live_applied_event_seq",
            "gauge",
            "Highest event sequence number applied and committed.",
            stats.applied_seq.load(Relaxed),
        ),
        (
            "stratify_live_last_change_seq",
            "gauge",
            "Highest change sequence number committed.",
            stats.last_change_seq.load(Relaxed),
        ),
    ];
    for (name, kind, help, value) in rows {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_counted() {
        let m = Metrics::default();
        m.observe("GET", "/v1/users/{id}", 200, 0.0007);
        m.observe("GET", "/v1/users/{id}", 404, 0.02);
        let text = m.render(1.0);
        assert!(text.contains("stratify_http_requests_total{method=\"GET\",route=\"/v1/users/{id}\",status=\"404\"} 1"));
        assert!(text.contains("le=\"0.001\"} 1\n"));
        assert!(text.contains("le=\"0.025\"} 2\n"));
        assert!(text.contains("stratify_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/users/{id}\"} 2"));
    }
}
