//! kube-proxy's sync metrics, prefixed `sluice_proxy_`, recorded by [`crate::proxier::Proxier`].
//!
//! Create one [`ProxyMetrics`], [`ProxyMetrics::register`] it into a prometheus-client
//! [`Registry`] and hand a clone to [`crate::proxier::Proxier::with_metrics`]. Clones share the
//! same underlying metrics. Names (as encoded; counters get `_total` from the encoder):
//!
//! | metric | type | recorded |
//! |---|---|---|
//! | `sluice_proxy_sync_proxy_rules_duration_seconds` | histogram | every sync that called the dataplane (success or failure) |
//! | `sluice_proxy_sync_full_proxy_rules_duration_seconds` | histogram | the same, full syncs only |
//! | `sluice_proxy_sync_partial_proxy_rules_duration_seconds` | histogram | the same, partial syncs only |
//! | `sluice_proxy_sync_proxy_rules_last_timestamp_seconds` | gauge | unix time of the last successful sync (also one with nothing to do) |
//! | `sluice_proxy_network_programming_duration_seconds` | histogram | per changed EndpointSlice: trigger time → end of the sync that programmed it |
//! | `sluice_proxy_sync_proxy_rules_endpoint_changes_pending` | gauge | services with pending EndpointSlice changes |
//! | `sluice_proxy_sync_proxy_rules_service_changes_pending` | gauge | services with pending Service changes |
//! | `sluice_proxy_sync_proxy_rules_endpoint_changes_total` | counter | EndpointSlice events that changed what is pending |
//! | `sluice_proxy_sync_proxy_rules_service_changes_total` | counter | Service events that changed what is pending |
//! | `sluice_proxy_sync_proxy_rules_failures_total{mode}` | counter | failed dataplane syncs, by [`crate::proxier::Dataplane::name`] |
//! | `sluice_proxy_sync_proxy_rules_last_queued_timestamp_seconds` | gauge | unix time a sync was last asked for |
//!
//! Buckets are kube-proxy's: sync durations 1 ms × 2ⁿ (15 buckets, up to ~16 s); network
//! programming 0.25 s … 5 min in kube-proxy's steps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, linear_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Prefix of every proxy metric.
pub const PREFIX: &str = "sluice_proxy";

/// Label set of the failure counter: `mode`.
pub type ModeLabels = Vec<(String, String)>;

/// A float gauge (unix timestamps).
pub type FloatGauge = Gauge<f64, AtomicU64>;

/// The proxy core's metrics (cheap to clone; clones share values).
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    /// Every sync that called the dataplane.
    pub sync_duration: Histogram,
    /// Full syncs.
    pub sync_full_duration: Histogram,
    /// Partial syncs.
    pub sync_partial_duration: Histogram,
    /// Unix seconds of the last successful sync.
    pub last_sync_timestamp: FloatGauge,
    /// Trigger time → programmed, per changed EndpointSlice.
    pub network_programming_duration: Histogram,
    /// Services with pending endpoint changes.
    pub endpoint_changes_pending: Gauge,
    /// Services with pending service changes.
    pub service_changes_pending: Gauge,
    /// EndpointSlice events that changed the pending state.
    pub endpoint_changes_total: Counter,
    /// Service events that changed the pending state.
    pub service_changes_total: Counter,
    /// Failed syncs by mode.
    pub sync_failures: Family<ModeLabels, Counter>,
    /// Unix seconds a sync was last queued.
    pub last_queued_timestamp: FloatGauge,
}

/// kube-proxy's `NetworkProgrammingLatency` buckets.
fn network_programming_buckets() -> Vec<f64> {
    linear_buckets(0.25, 0.25, 2)
        .chain(linear_buckets(1.0, 1.0, 59))
        .chain(linear_buckets(60.0, 5.0, 12))
        .chain(linear_buckets(120.0, 30.0, 7))
        .collect()
}

fn sync_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyMetrics {
    /// Fresh, unregistered metrics.
    pub fn new() -> Self {
        Self {
            sync_duration: sync_histogram(),
            sync_full_duration: sync_histogram(),
            sync_partial_duration: sync_histogram(),
            last_sync_timestamp: FloatGauge::default(),
            network_programming_duration: Histogram::new(network_programming_buckets()),
            endpoint_changes_pending: Gauge::default(),
            service_changes_pending: Gauge::default(),
            endpoint_changes_total: Counter::default(),
            service_changes_total: Counter::default(),
            sync_failures: Family::default(),
            last_queued_timestamp: FloatGauge::default(),
        }
    }

    /// Registers every metric under [`PREFIX`] in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix(PREFIX);
        r.register(
            "sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            self.sync_duration.clone(),
        );
        r.register(
            "sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            self.sync_full_duration.clone(),
        );
        r.register(
            "sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            self.sync_partial_duration.clone(),
        );
        r.register(
            "sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            self.last_sync_timestamp.clone(),
        );
        r.register(
            "network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            self.network_programming_duration.clone(),
        );
        r.register(
            "sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            self.endpoint_changes_pending.clone(),
        );
        r.register(
            "sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            self.service_changes_pending.clone(),
        );
        // The text encoder appends `_total` to counters.
        r.register(
            "sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            self.endpoint_changes_total.clone(),
        );
        r.register(
            "sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            self.service_changes_total.clone(),
        );
        r.register(
            "sync_proxy_rules_failures",
            "Cumulative proxy rules sync failures",
            self.sync_failures.clone(),
        );
        r.register(
            "sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            self.last_queued_timestamp.clone(),
        );
    }

    /// The failure counter of `mode` (created at zero so it is exported before any failure).
    pub fn failures(&self, mode: &str) -> Counter {
        self.sync_failures
            .get_or_create_owned(&vec![("mode".to_string(), mode.to_string())])
    }
}

/// Seconds since the unix epoch (0 for times before it).
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_encoded() {
        let m = ProxyMetrics::new();
        let mut reg = Registry::default();
        m.register(&mut reg);
        m.failures("iptables").inc();
        m.endpoint_changes_total.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        for name in [
            "sluice_proxy_sync_proxy_rules_duration_seconds_bucket",
            "sluice_proxy_sync_full_proxy_rules_duration_seconds_count",
            "sluice_proxy_sync_partial_proxy_rules_duration_seconds_sum",
            "sluice_proxy_sync_proxy_rules_last_timestamp_seconds ",
            "sluice_proxy_network_programming_duration_seconds_bucket",
            "sluice_proxy_sync_proxy_rules_endpoint_changes_pending ",
            "sluice_proxy_sync_proxy_rules_service_changes_pending ",
            "sluice_proxy_sync_proxy_rules_endpoint_changes_total 1",
            "sluice_proxy_sync_proxy_rules_service_changes_total 0",
            "sluice_proxy_sync_proxy_rules_failures_total{mode=\"iptables\"} 1",
            "sluice_proxy_sync_proxy_rules_last_queued_timestamp_seconds ",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
