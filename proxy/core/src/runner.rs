//! Bounded-frequency runner: the sync loop's rate limiter (`--min-sync-period`, `--sync-period`).
//!
//! Guarantees (the facts of kube-proxy's `BoundedFrequencyRunner`):
//!
//! * [`RunnerHandle::run`] requests coalesce: a 1-slot queue, so any number of requests made
//!   while one is pending cause a single run.
//! * At least `min_interval` passes between the end of one run and the start of the next.
//! * The function runs at least once per `max_interval` (measured from the end of the last run,
//!   or from start-up) even without requests.
//! * After a failed run (the function returned `Err`), it runs again within `retry_interval`
//!   (but never sooner than `min_interval`).
//!
//! There is no run at start-up; the first run happens on the first request or after
//! `max_interval`. The loop ends when every [`RunnerHandle`] is dropped or the shutdown future
//! given to [`BoundedFrequencyRunner::run_until`] completes.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

/// Invalid runner configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RunnerError {
    /// `max_interval` must be non-zero and at least `min_interval`.
    #[error("runner {name}: max interval {max:?} must be non-zero and >= min interval {min:?}")]
    InvalidIntervals {
        /// Runner name.
        name: String,
        /// Configured minimum interval.
        min: Duration,
        /// Configured maximum interval.
        max: Duration,
    },
}

/// Timing of a [`BoundedFrequencyRunner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerIntervals {
    /// Minimum time between the end of a run and the start of the next (`--min-sync-period`).
    pub min_interval: Duration,
    /// Maximum time between runs (`--sync-period`).
    pub max_interval: Duration,
    /// Retry delay after a failed run.
    pub retry_interval: Duration,
}

/// Cheap, cloneable handle used to request runs.
#[derive(Debug, Clone)]
pub struct RunnerHandle {
    tx: mpsc::Sender<()>,
}

impl RunnerHandle {
    /// Requests a run as soon as the minimum interval allows. Never blocks; coalesces with a
    /// request already pending.
    pub fn run(&self) {
        // Full = a run is already requested; Closed = the loop ended. Both are fine to ignore.
        let _ = self.tx.try_send(());
    }
}

/// The runner loop. Create with [`BoundedFrequencyRunner::new`], drive with
/// [`BoundedFrequencyRunner::run`] (typically in its own task).
pub struct BoundedFrequencyRunner<F> {
    name: String,
    intervals: RunnerIntervals,
    rx: mpsc::Receiver<()>,
    f: F,
}

impl<F, Fut, E> BoundedFrequencyRunner<F>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    /// Builds a runner around `f` and a handle to request runs.
    pub fn new(
        name: impl Into<String>,
        intervals: RunnerIntervals,
        f: F,
    ) -> Result<(Self, RunnerHandle), RunnerError> {
        let name = name.into();
        if intervals.max_interval.is_zero() || intervals.max_interval < intervals.min_interval {
            return Err(RunnerError::InvalidIntervals {
                name,
                min: intervals.min_interval,
                max: intervals.max_interval,
            });
        }
        let (tx, rx) = mpsc::channel(1);
        Ok((
            Self {
                name,
                intervals,
                rx,
                f,
            },
            RunnerHandle { tx },
        ))
    }

    /// Runs until every handle is dropped.
    pub async fn run(self) {
        self.run_until(std::future::pending::<()>()).await;
    }

    /// Runs until every handle is dropped or `shutdown` completes.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) {
        let RunnerIntervals {
            min_interval,
            max_interval,
            retry_interval,
        } = self.intervals;
        let retry_interval = retry_interval.max(min_interval);
        tokio::pin!(shutdown);
        let mut last_end: Option<Instant> = None;
        let mut next_run = Instant::now() + max_interval;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep_until(next_run) => {}
                req = self.rx.recv() => {
                    if req.is_none() {
                        debug!(runner = %self.name, "all handles dropped; stopping");
                        return;
                    }
                    let now = Instant::now();
                    if let Some(earliest) = last_end.map(|e| e + min_interval) {
                        if earliest > now {
                            next_run = next_run.min(earliest);
                            continue;
                        }
                    }
                }
            }
            let result = (self.f)().await;
            let end = Instant::now();
            last_end = Some(end);
            next_run = match result {
                Ok(()) => end + max_interval,
                Err(e) => {
                    warn!(runner = %self.name, error = %e, retry_in = ?retry_interval, "run failed");
                    end + retry_interval
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);
    const RETRY: Duration = Duration::from_secs(5);

    type Log = Arc<Mutex<Vec<(Duration, Duration)>>>;

    /// Spawns a runner whose function takes `run_time` and fails on the listed run numbers.
    /// The log records (start, end) offsets from `t0`.
    fn spawn(run_time: Duration, fail_on: &'static [usize]) -> (RunnerHandle, Log, Instant) {
        let t0 = Instant::now();
        let log: Log = Arc::default();
        let log2 = log.clone();
        let (runner, handle) = BoundedFrequencyRunner::new(
            "test",
            RunnerIntervals {
                min_interval: MIN,
                max_interval: MAX,
                retry_interval: RETRY,
            },
            move || {
                let log = log2.clone();
                async move {
                    let start = Instant::now() - t0;
                    tokio::time::sleep(run_time).await;
                    let n = {
                        let mut l = log.lock().unwrap();
                        l.push((start, Instant::now() - t0));
                        l.len()
                    };
                    if fail_on.contains(&n) {
                        Err(format!("run {n} failed"))
                    } else {
                        Ok(())
                    }
                }
            },
        )
        .unwrap();
        tokio::spawn(runner.run());
        (handle, log, t0)
    }

    fn starts(log: &Log) -> Vec<Duration> {
        log.lock().unwrap().iter().map(|(s, _)| *s).collect()
    }

    async fn sleep_until_offset(t0: Instant, d: Duration) {
        tokio::time::sleep_until(t0 + d).await;
    }

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn first_request_runs_immediately_and_requests_coalesce() {
        let (h, log, t0) = spawn(Duration::ZERO, &[]);
        h.run();
        sleep_until_offset(t0, ms(10)).await;
        assert_eq!(starts(&log), vec![ms(0)]);
        for _ in 0..10 {
            h.run();
        }
        sleep_until_offset(t0, ms(5000)).await;
        // Ten requests inside the min interval collapse into one run at end + MIN.
        assert_eq!(starts(&log), vec![ms(0), MIN]);
    }

    #[tokio::test(start_paused = true)]
    async fn min_interval_is_measured_from_end_of_run() {
        let run_time = ms(300);
        let (h, log, t0) = spawn(run_time, &[]);
        h.run();
        sleep_until_offset(t0, ms(100)).await;
        // Requested while the first run is still going.
        h.run();
        sleep_until_offset(t0, ms(4000)).await;
        let l = log.lock().unwrap().clone();
        assert_eq!(l.len(), 2, "{l:?}");
        assert_eq!(l[0], (ms(0), ms(300)));
        assert_eq!(l[1].0, ms(300) + MIN);
        for w in l.windows(2) {
            assert!(w[1].0 - w[0].1 >= MIN, "{l:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn request_after_min_interval_runs_immediately() {
        let (h, log, t0) = spawn(Duration::ZERO, &[]);
        h.run();
        sleep_until_offset(t0, ms(2500)).await;
        h.run();
        sleep_until_offset(t0, ms(2600)).await;
        assert_eq!(starts(&log), vec![ms(0), ms(2500)]);
    }

    #[tokio::test(start_paused = true)]
    async fn runs_at_least_once_per_max_interval() {
        let (_h, log, t0) = spawn(Duration::ZERO, &[]);
        sleep_until_offset(t0, MAX * 3 + ms(10)).await;
        assert_eq!(starts(&log), vec![MAX, MAX * 2, MAX * 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_after_failure_within_retry_interval() {
        // Runs 1 and 2 fail, run 3 succeeds.
        let (h, log, t0) = spawn(Duration::ZERO, &[1, 2]);
        h.run();
        sleep_until_offset(t0, RETRY * 2 + ms(10)).await;
        assert_eq!(starts(&log), vec![ms(0), RETRY, RETRY * 2]);
        // After the success the next periodic run is a full MAX later.
        sleep_until_offset(t0, RETRY * 2 + MAX - ms(10)).await;
        assert_eq!(log.lock().unwrap().len(), 3);
        sleep_until_offset(t0, RETRY * 2 + MAX + ms(10)).await;
        assert_eq!(log.lock().unwrap().len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_when_handles_dropped() {
        let (runner, handle) = BoundedFrequencyRunner::new(
            "t",
            RunnerIntervals {
                min_interval: MIN,
                max_interval: MAX,
                retry_interval: RETRY,
            },
            || async { Ok::<(), String>(()) },
        )
        .unwrap();
        let task = tokio::spawn(runner.run());
        drop(handle);
        tokio::time::timeout(ms(10), task)
            .await
            .expect("runner stopped")
            .unwrap();
    }

    #[test]
    fn rejects_bad_intervals() {
        let r = BoundedFrequencyRunner::new(
            "t",
            RunnerIntervals {
                min_interval: MAX,
                max_interval: MIN,
                retry_interval: RETRY,
            },
            || async { Ok::<(), String>(()) },
        );
        assert!(matches!(r, Err(RunnerError::InvalidIntervals { .. })));
    }
}
