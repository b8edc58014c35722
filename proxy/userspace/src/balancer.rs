//! Endpoint choice for one listener: round robin, optional ClientIP affinity.
//!
//! Shared (`Arc`) between the dataplane, which [`Balancer::update`]s it on every sync, and the
//! listener's tasks, which [`Balancer::pick`] once per new TCP connection / UDP flow. The
//! critical section is a few instructions under a `std::sync::Mutex` (never held across an
//! await); the endpoint list itself is an `Arc<[SocketAddr]>` handed out to the connection so
//! retries walk a stable snapshot without locking again.
//!
//! Time is a parameter (`now`) so affinity expiry is testable without sleeping.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Affinity entries are swept once the table reaches this size (then twice the live size).
const MIN_SWEEP_AT: usize = 1024;

/// The endpoints to try for one connection, in order: the chosen one first, then the others
/// in round-robin order.
#[derive(Debug, Clone)]
pub struct Choice {
    endpoints: Arc<[SocketAddr]>,
    first: usize,
}

impl Choice {
    /// The chosen endpoint.
    pub fn first(&self) -> SocketAddr {
        self.endpoints[self.first]
    }

    /// Every endpoint once, starting with [`Choice::first`].
    pub fn candidates(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let n = self.endpoints.len();
        (0..n).map(move |i| self.endpoints[(self.first + i) % n])
    }
}

#[derive(Debug, Clone, Copy)]
struct Pin {
    endpoint: SocketAddr,
    last_used: Instant,
}

#[derive(Debug)]
struct Inner {
    endpoints: Arc<[SocketAddr]>,
    next: usize,
    affinity: Option<Duration>,
    pins: HashMap<IpAddr, Pin>,
    sweep_at: usize,
}

/// Round-robin balancer with optional ClientIP session affinity.
#[derive(Debug)]
pub struct Balancer {
    inner: Mutex<Inner>,
    generation: AtomicU64,
}

impl Balancer {
    /// A balancer over `endpoints` (sorted and deduplicated), pinning clients for `affinity`
    /// since their last use when set.
    pub fn new(endpoints: Vec<SocketAddr>, affinity: Option<Duration>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                endpoints: normalize(endpoints),
                next: 0,
                affinity,
                pins: HashMap::new(),
                sweep_at: MIN_SWEEP_AT,
            }),
            generation: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` inconsistent in a harmful way.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the endpoints and the affinity timeout. Pins to endpoints that are gone are
    /// dropped. Returns whether anything changed (which bumps [`Balancer::generation`]).
    pub fn update(&self, endpoints: Vec<SocketAddr>, affinity: Option<Duration>) -> bool {
        let endpoints = normalize(endpoints);
        let mut g = self.lock();
        if *g.endpoints == *endpoints && g.affinity == affinity {
            return false;
        }
        if affinity.is_none() {
            g.pins.clear();
        } else {
            g.pins
                .retain(|_, p| endpoints.binary_search(&p.endpoint).is_ok());
        }
        g.next = if endpoints.is_empty() {
            0
        } else {
            g.next % endpoints.len()
        };
        g.endpoints = endpoints;
        g.affinity = affinity;
        drop(g);
        self.generation.fetch_add(1, Ordering::Release);
        true
    }

    /// Increases whenever [`Balancer::update`] changes something (cheap check for UDP flows).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current endpoints, sorted.
    pub fn endpoints(&self) -> Arc<[SocketAddr]> {
        self.lock().endpoints.clone()
    }

    /// Whether `ep` is a current endpoint.
    pub fn contains(&self, ep: SocketAddr) -> bool {
        self.lock().endpoints.binary_search(&ep).is_ok()
    }

    /// Chooses the endpoints for a new connection from `client` at `now`: the client's pinned
    /// endpoint if affinity is on and the pin has not expired, else the next in round-robin
    /// order (and pins the client to it). `None` when there are no endpoints.
    pub fn pick(&self, client: IpAddr, now: Instant) -> Option<Choice> {
        let mut g = self.lock();
        let n = g.endpoints.len();
        if n == 0 {
            return None;
        }
        if let Some(timeout) = g.affinity {
            let endpoints = g.endpoints.clone();
            if let Some(pin) = g.pins.get_mut(&client) {
                if now.saturating_duration_since(pin.last_used) < timeout {
                    if let Ok(i) = endpoints.binary_search(&pin.endpoint) {
                        pin.last_used = now;
                        return Some(Choice {
                            endpoints,
                            first: i,
                        });
                    }
                }
            }
            let i = g.next;
            g.next = (i + 1) % n;
            g.pins.insert(
                client,
                Pin {
                    endpoint: endpoints[i],
                    last_used: now,
                },
            );
            if g.pins.len() >= g.sweep_at {
                g.pins
                    .retain(|_, p| now.saturating_duration_since(p.last_used) < timeout);
                g.sweep_at = (g.pins.len() * 2).max(MIN_SWEEP_AT);
            }
            return Some(Choice {
                endpoints,
                first: i,
            });
        }
        let i = g.next;
        g.next = (i + 1) % n;
        Some(Choice {
            endpoints: g.endpoints.clone(),
            first: i,
        })
    }

    /// Re-pins `client` to `endpoint` (after its first choice failed and another worked). No-op
    /// without affinity.
    pub fn pin(&self, client: IpAddr, endpoint: SocketAddr, now: Instant) {
        let mut g = self.lock();
        if g.affinity.is_some() {
            g.pins.insert(
                client,
                Pin {
                    endpoint,
                    last_used: now,
                },
            );
        }
    }
}

fn normalize(mut endpoints: Vec<SocketAddr>) -> Arc<[SocketAddr]> {
    endpoints.sort();
    endpoints.dedup();
    endpoints.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 244, 0, i], 8080)))
            .collect()
    }

    fn client(i: u8) -> IpAddr {
        IpAddr::from([192, 168, 0, i])
    }

    #[test]
    fn round_robin_cycles_through_every_endpoint_in_order() {
        let mut e = eps(3);
        e.reverse(); // input order does not matter: endpoints are sorted
        let b = Balancer::new(e, None);
        let now = Instant::now();
        let got: Vec<SocketAddr> = (0..7)
            .map(|_| b.pick(client(1), now).unwrap().first())
            .collect();
        let want = eps(3);
        assert_eq!(
            got,
            [want[0], want[1], want[2], want[0], want[1], want[2], want[0]]
        );
    }

    #[test]
    fn no_endpoints_means_no_choice() {
        let b = Balancer::new(Vec::new(), Some(Duration::from_secs(10)));
        assert!(b.pick(client(1), Instant::now()).is_none());
    }

    #[test]
    fn candidates_start_at_the_choice_and_visit_each_endpoint_once() {
        let b = Balancer::new(eps(3), None);
        let now = Instant::now();
        b.pick(client(1), now);
        let c = b.pick(client(1), now).unwrap();
        let e = eps(3);
        assert_eq!(c.candidates().collect::<Vec<_>>(), [e[1], e[2], e[0]]);
    }

    #[test]
    fn client_ip_affinity_pins_until_timeout_since_last_use() {
        let timeout = Duration::from_secs(10);
        let b = Balancer::new(eps(2), Some(timeout));
        let t0 = Instant::now();
        let first = b.pick(client(1), t0).unwrap().first();
        // Another client takes the next endpoint; client 1 stays pinned.
        let other = b.pick(client(2), t0).unwrap().first();
        assert_ne!(first, other);
        for s in [1, 9, 18, 27] {
            // Each use refreshes the pin, so 27 s after t0 is still within 10 s of the last use.
            let t = t0 + Duration::from_secs(s);
            assert_eq!(b.pick(client(1), t).unwrap().first(), first, "at {s}s");
        }
        // 10 s idle: expired, back to round robin (next index is 0 again → `first`), so check
        // with the round-robin position moved on by one more client.
        let t = t0 + Duration::from_secs(27 + 10);
        assert_eq!(b.pick(client(3), t).unwrap().first(), first);
        assert_eq!(
            b.pick(client(1), t).unwrap().first(),
            other,
            "expired pin must not be honoured"
        );
        // And the new pin sticks.
        assert_eq!(
            b.pick(client(1), t + Duration::from_secs(1))
                .unwrap()
                .first(),
            other
        );
    }

    #[test]
    fn repin_after_failover_and_pins_to_removed_endpoints_are_dropped() {
        let b = Balancer::new(eps(3), Some(Duration::from_secs(100)));
        let t0 = Instant::now();
        let e = eps(3);
        assert_eq!(b.pick(client(1), t0).unwrap().first(), e[0]);
        b.pin(client(1), e[2], t0);
        assert_eq!(b.pick(client(1), t0).unwrap().first(), e[2]);
        let g0 = b.generation();
        assert!(b.update(vec![e[0], e[1]], Some(Duration::from_secs(100))));
        assert!(b.generation() > g0);
        assert!(!b.contains(e[2]));
        let got = b.pick(client(1), t0).unwrap().first();
        assert_ne!(got, e[2]);
        // Unchanged update: no generation bump.
        let g1 = b.generation();
        assert!(!b.update(vec![e[1], e[0]], Some(Duration::from_secs(100))));
        assert_eq!(b.generation(), g1);
    }

    #[test]
    fn expired_pins_are_swept_when_the_table_grows() {
        let timeout = Duration::from_secs(1);
        let b = Balancer::new(eps(2), Some(timeout));
        let t0 = Instant::now();
        for i in 0..MIN_SWEEP_AT as u32 - 1 {
            b.pick(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert_eq!(b.lock().pins.len(), MIN_SWEEP_AT - 1);
        b.pick(client(1), t0 + Duration::from_secs(5));
        assert_eq!(b.lock().pins.len(), 1, "only the fresh pin survives");
    }
}
