//! The proxy's health (`/healthz`, `/livez`) and metrics (`/metrics`) servers.
//!
//! Health follows kube-proxy's proxier health server: the proxy loop reports when a sync is
//! queued ([`ProxyHealth::queued_update`]) and when a sync succeeded ([`ProxyHealth::updated`]).
//! The proxy is healthy once it has synced at least once and no queued change has been waiting
//! longer than the timeout (kube-proxy's `healthzTimeout`, twice `--sync-period`). Before the
//! first sync it is unhealthy (503), so a readiness probe waits for rules to exist.
//!
//! In `--proxy-mode none` there is nothing to program, so nothing can be stale:
//! [`ProxyHealth::always_healthy`] answers 200 with `lastUpdated` = the agent's start.
//!
//! Both `/healthz` and `/livez` answer kube-proxy's body:
//! `{"lastUpdated": "<RFC 3339>"|null, "currentTime": "<RFC 3339>", "nodeEligible": true}`
//! (`null` before the first sync; `nodeEligible` is always true: Sluice does not yet withdraw
//! a node that is being deleted from load balancers).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use k8s_openapi::jiff::Timestamp;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Delay before retrying a listener that could not bind.
const BIND_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct HealthState {
    /// Last successful sync (monotonic, wall clock).
    last_updated: Option<(Instant, SystemTime)>,
    /// Oldest sync request not yet followed by a successful sync.
    oldest_queued: Option<Instant>,
}

/// Shared health of the proxy loop.
#[derive(Debug)]
pub struct ProxyHealth {
    timeout: Duration,
    /// `Some(start)`: no proxy runs; always healthy, "updated" at `start`.
    always: Option<SystemTime>,
    state: Mutex<HealthState>,
}

/// One reading of [`ProxyHealth`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthStatus {
    /// Whether `/healthz` answers 200.
    pub healthy: bool,
    /// Last successful sync.
    pub last_updated: Option<SystemTime>,
    /// When this reading was taken.
    pub current_time: SystemTime,
}

impl ProxyHealth {
    /// Health of a proxy whose queued changes must be synced within `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            always: None,
            state: Mutex::new(HealthState::default()),
        }
    }

    /// Health when no proxy runs (`--proxy-mode none`): always healthy.
    pub fn always_healthy() -> Self {
        Self {
            timeout: Duration::MAX,
            always: Some(SystemTime::now()),
            state: Mutex::new(HealthState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        // The state stays consistent even if a holder panicked: it is two plain fields.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A sync was requested (kube-proxy's `QueuedUpdate`); the oldest pending request counts.
    pub fn queued_update(&self) {
        self.lock().oldest_queued.get_or_insert_with(Instant::now);
    }

    /// A sync succeeded (kube-proxy's `Updated`): everything queued before it is done.
    pub fn updated(&self) {
        let mut s = self.lock();
        s.last_updated = Some((Instant::now(), SystemTime::now()));
        s.oldest_queued = None;
    }

    /// The current health.
    pub fn status(&self) -> HealthStatus {
        self.status_at(Instant::now(), SystemTime::now())
    }

    fn status_at(&self, now: Instant, wall: SystemTime) -> HealthStatus {
        if let Some(start) = self.always {
            return HealthStatus {
                healthy: true,
                last_updated: Some(start),
                current_time: wall,
            };
        }
        let s = self.lock();
        let waited_too_long = s
            .oldest_queued
            .is_some_and(|q| now.saturating_duration_since(q) >= self.timeout);
        HealthStatus {
            healthy: s.last_updated.is_some() && !waited_too_long,
            last_updated: s.last_updated.map(|(_, w)| w),
            current_time: wall,
        }
    }
}

/// RFC 3339 (UTC, fractional seconds as needed) for a wall-clock time.
pub fn rfc3339(t: SystemTime) -> String {
    let ns = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    i128::try_from(ns)
        .ok()
        .and_then(|ns| Timestamp::from_nanosecond(ns).ok())
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_string()
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

async fn healthz(State(health): State<Arc<ProxyHealth>>) -> Response {
    let st = health.status();
    let body = serde_json::json!({
        "lastUpdated": st.last_updated.map(rfc3339),
        "currentTime": rfc3339(st.current_time),
        "nodeEligible": true,
    });
    let code = if st.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(code, body.to_string())
}

/// The `/healthz` + `/livez` router.
pub fn healthz_router(health: Arc<ProxyHealth>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .with_state(health)
}

/// Process metrics refreshed on every scrape (Linux `/proc/self`).
#[derive(Debug, Clone, Default)]
struct ProcessMetrics {
    resident: Gauge,
    virtual_mem: Gauge,
    open_fds: Gauge,
    start_time: Gauge<f64, AtomicU64>,
}

impl ProcessMetrics {
    fn register(&self, r: &mut Registry) {
        r.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            self.resident.clone(),
        );
        r.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            self.virtual_mem.clone(),
        );
        r.register(
            "process_open_fds",
            "Number of open file descriptors",
            self.open_fds.clone(),
        );
        r.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            self.start_time.clone(),
        );
    }

    fn refresh(&self) {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            let kb = |key: &str| -> Option<i64> {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))?
                    .split_whitespace()
                    .next()?
                    .parse::<i64>()
                    .ok()
                    .map(|v| v.saturating_mul(1024))
            };
            if let Some(v) = kb("VmRSS:") {
                self.resident.set(v);
            }
            if let Some(v) = kb("VmSize:") {
                self.virtual_mem.set(v);
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds
                .set(i64::try_from(dir.count()).unwrap_or(i64::MAX));
        }
    }
}

#[derive(Debug)]
struct MetricsState {
    registry: Registry,
    process: ProcessMetrics,
}

async fn metrics(State(state): State<Arc<MetricsState>>) -> Response {
    state.process.refresh();
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}"),
        )
            .into_response();
    }
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

/// The `/metrics` router over `registry`, with process metrics added.
pub fn metrics_router(mut registry: Registry) -> Router {
    let process = ProcessMetrics::default();
    process.register(&mut registry);
    process
        .start_time
        .set(sluice_proxy::metrics::unix_seconds(SystemTime::now()));
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(Arc::new(MetricsState { registry, process }))
}

/// Serves `router` on `addr` until the task is dropped; binding is retried every few seconds
/// (another process may hold the port, as kube-proxy's servers retry).
pub async fn serve(what: &'static str, addr: SocketAddr, router: Router) {
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                tracing::info!(server = what, %addr, "serving");
                if let Err(e) = axum::serve(listener, router.clone()).await {
                    tracing::warn!(server = what, %addr, error = %e, "server failed; restarting");
                }
            }
            Err(e) => {
                tracing::warn!(server = what, %addr, error = %e, "cannot listen; retrying");
            }
        }
        tokio::time::sleep(BIND_RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_after_a_sync_and_while_queued_changes_are_fresh() {
        let h = ProxyHealth::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let wall = SystemTime::now();
        assert!(!h.status_at(t0, wall).healthy, "no sync yet");
        h.queued_update();
        assert!(!h.status_at(t0, wall).healthy);
        h.updated();
        let st = h.status_at(Instant::now(), wall);
        assert!(st.healthy);
        assert!(st.last_updated.is_some());
        // Queued and not synced: healthy until the timeout, then not.
        h.queued_update();
        let later = Instant::now() + Duration::from_secs(59);
        assert!(h.status_at(later, wall).healthy);
        // A second request does not reset the clock.
        h.queued_update();
        assert!(!h.status_at(later + Duration::from_secs(2), wall).healthy);
        h.updated();
        assert!(h.status_at(later + Duration::from_secs(2), wall).healthy);
        assert!(ProxyHealth::always_healthy().status().healthy);
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1500)),
            "1970-01-01T00:00:01.5Z"
        );
    }
}
