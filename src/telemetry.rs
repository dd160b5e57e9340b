//! Logging and metrics.
//!
//! Logs go through `tracing` (human-readable, or JSON lines with
//! `STOWAGE_LOG_JSON=1`), filtered by `RUST_LOG` (default `info`), and always
//! to stderr: stdout belongs to the command's own output, which scripts parse
//! (`stowage audit --json | jq`). Metrics are recorded with the `metrics`
//! facade and rendered for Prometheus at `/metrics`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Where sqlx reports PostgreSQL's `NOTICE` messages, at info level.
const PG_NOTICE_TARGET: &str = "sqlx::postgres::notice";

/// Installs the global subscriber; safe to call more than once (tests).
pub fn init_logging(json: bool) {
    let registry = tracing_subscriber::registry().with(filter(std::env::var("RUST_LOG").ok()));
    let res = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_target(false).with_writer(std::io::stderr))
            .try_init()
    };
    let _ = res;
}

/// `RUST_LOG` (default `info`), with PostgreSQL's `NOTICE`s (which sqlx logs
/// at info) left out unless `RUST_LOG` names their target: the server sends
/// one for every `CREATE … IF NOT EXISTS` that finds the object there
/// ("relation _sqlx_migrations already exists, skipping"), on every start.
/// The server's warnings and errors still show.
fn filter(rust_log: Option<String>) -> EnvFilter {
    let spec = rust_log
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "info".into());
    let f = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    if spec.contains(PG_NOTICE_TARGET) {
        f
    } else {
        f.add_directive(
            format!("{PG_NOTICE_TARGET}=warn")
                .parse()
                .expect("static directive"),
        )
    }
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide Prometheus recorder (installed on first use).
pub fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ])
            .expect("static buckets")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (several apps in one test
        // process); the handle still renders this one's view.
        let _ = ::metrics::set_global_recorder(recorder);
        handle
    })
}

/// Named recording points, so metric names live in one place.
pub mod metrics {
    pub fn request(route: &str, method: &str, status: u16, secs: f64) {
        let labels = [
            ("route", route.to_string()),
            ("method", method.to_string()),
            ("status", status.to_string()),
        ];
        ::metrics::counter!("stowage_http_requests_total", &labels).increment(1);
        ::metrics::histogram!("stowage_http_request_duration_seconds", &labels[..2]).record(secs);
    }
    pub fn bytes_out(n: u64) {
        ::metrics::counter!("stowage_bytes_out_total").increment(n);
    }
    /// The part of `stowage_bytes_out_total` sent with `sendfile(2)`.
    pub fn bytes_out_sendfile(n: u64) {
        ::metrics::counter!("stowage_bytes_out_sendfile_total").increment(n);
    }
    pub fn upload_committed(n: u64) {
        ::metrics::counter!("stowage_bytes_in_total").increment(n);
        ::metrics::counter!("stowage_uploads_total").increment(1);
    }
    pub fn upload_duration(secs: f64) {
        ::metrics::histogram!("stowage_upload_duration_seconds").record(secs);
    }
    pub fn quota_refused() {
        ::metrics::counter!("stowage_quota_refusals_total").increment(1);
    }
    pub fn blob_error() {
        ::metrics::counter!("stowage_blob_errors_total").increment(1);
    }
    /// Events in the outbox by delivery state (`stowage_events{status}`).
    pub fn events(pending: u64, delivered: u64, failed: u64) {
        for (status, n) in [
            ("pending", pending),
            ("delivered", delivered),
            ("failed", failed),
        ] {
            ::metrics::gauge!("stowage_events", "status" => status).set(n as f64);
        }
    }
    pub fn job_queue_depth(n: u64) {
        ::metrics::gauge!("stowage_job_queue_depth").set(n as f64);
    }
    /// Bytes of object-store uploads spooled on local scratch now.
    pub fn s3_spool_bytes(n: u64) {
        ::metrics::gauge!("stowage_s3_spool_bytes").set(n as f64);
    }
}
