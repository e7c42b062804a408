//! CPU time charged to plugin code, and the wall-clock backstop.
//!
//! A plugin's `time_limit` is CPU time its code used, not time that
//! passed: on a busy machine a plugin that needs 0.18 s of CPU must not
//! fail a 500 ms limit because other processes had the cores. A guest
//! entry (a call, or an instantiation) is a future that wasmtime runs on
//! a fiber; tokio polls it, on any worker thread, and each poll runs the
//! guest on the polling thread. So the CPU an entry used is the sum, over
//! its polls, of the polling thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`)
//! at the end minus at the start of the poll. The epoch callback, which
//! wasmtime runs on that same thread every tick the guest keeps running,
//! adds the current poll's part, interrupts the guest past its limit, and
//! otherwise yields to tokio (so one guest does not hold a worker thread).
//!
//! Reading that clock is a system call (~1 µs here, a third of a warm
//! call), so the first poll of an entry is not measured: almost every call
//! ends in it, within microseconds. It is charged its wall-clock time, at
//! most one tick (it cannot have run longer without meeting its first
//! tick): the error is at most one tick per entry, the limits' granularity
//! anyway. Every later poll is measured exactly.
//!
//! Time a guest spends waiting in an async host call (a WASI clock, the
//! coming DNS and KV imports) is not CPU. A larger wall-clock limit ends
//! such waits, so that a plugin cannot hold its session and its pool slot
//! for ever.

use std::future::Future;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::Poll;
use std::time::{Duration, Instant};

use wasmtime::UpdateDeadline;

/// Epoch tick: how often a running guest is checked (and yields).
pub const TICK: Duration = Duration::from_millis(10);

/// The limits of one guest entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// CPU time the guest may use.
    pub cpu: Duration,
    /// Time that may pass, waiting included.
    pub wall: Duration,
}

impl Limit {
    /// A CPU limit with its wall-clock backstop: four times the CPU time,
    /// and at least two seconds more (a guest that waits in host calls
    /// or shares the cores with a busy machine is not cut short by it).
    pub fn cpu(cpu: Duration) -> Limit {
        Limit {
            cpu,
            wall: cpu
                .saturating_mul(4)
                .max(cpu.saturating_add(Duration::from_secs(2))),
        }
    }
}

/// A guest ran past its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeLimitExceeded {
    /// It used its CPU time.
    #[error("time limit exceeded ({} of CPU)", humantime::format_duration(*.0))]
    Cpu(Duration),
    /// The wall-clock backstop ended a wait.
    #[error(
        "time limit exceeded ({} of wall-clock time, waiting in host calls or starved of CPU)",
        humantime::format_duration(*.0)
    )]
    Wall(Duration),
}

/// The CPU accounting of one store: the entry running on it now.
///
/// Shared by the store's epoch callback and [`Meter::run`], which cannot
/// borrow the store while the entry runs; a store runs on one thread at a
/// time (tokio's hand-over between threads orders the accesses), so
/// relaxed atomics are enough.
#[derive(Debug, Default)]
pub struct Meter {
    /// Nanoseconds charged to the entry so far.
    spent: AtomicU64,
    /// This thread's CPU clock (ns) when measuring the current poll
    /// began; 0 while the first poll runs unmeasured.
    mark: AtomicU64,
    /// Nanoseconds of CPU the entry may use.
    limit: AtomicU64,
    /// When the entry began, in ns since [`START`].
    started: AtomicU64,
}

/// A fixed point for storing instants in atomics.
static START: LazyLock<Instant> = LazyLock::new(Instant::now);

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The CPU time this thread has used, in ns (never 0).
fn thread_cpu() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    let ns = u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0));
    ns.max(1)
}

impl Meter {
    /// The CPU time charged to the last (or current) entry.
    pub fn spent(&self) -> Duration {
        Duration::from_nanos(self.spent.load(Relaxed))
    }

    /// The first poll's charge: the wall-clock time since the entry
    /// began, at most a tick.
    fn first_poll(&self) -> u64 {
        let now = nanos(START.elapsed());
        now.saturating_sub(self.started.load(Relaxed))
            .min(nanos(TICK))
    }

    /// Adds the current poll's CPU time so far, and starts measuring
    /// again from now.
    fn charge_poll(&self, restart: bool) -> u64 {
        let now = thread_cpu();
        let mark = self.mark.swap(if restart { now } else { 0 }, Relaxed);
        let used = if mark == 0 {
            self.first_poll()
        } else {
            now.saturating_sub(mark)
        };
        self.spent.fetch_add(used, Relaxed).saturating_add(used)
    }

    /// The epoch callback: the guest ran for another tick. Past its CPU
    /// limit it is stopped; otherwise it yields to tokio.
    pub fn tick(&self) -> wasmtime::Result<UpdateDeadline> {
        let spent = self.charge_poll(true);
        let limit = self.limit.load(Relaxed);
        if spent > limit {
            return Err(TimeLimitExceeded::Cpu(Duration::from_nanos(limit)).into());
        }
        Ok(UpdateDeadline::Yield(1))
    }

    /// Runs a guest entry (instantiation or call) within `limit`. The
    /// store's epoch deadline must be one tick ahead (so that
    /// [`Meter::tick`] runs at the first tick).
    ///
    /// An entry that finishes in its first poll, as almost every call
    /// does, costs two clock reads of the vDSO, no system call and no
    /// timer.
    pub async fn run<T>(
        &self,
        limit: Limit,
        entry: impl Future<Output = wasmtime::Result<T>>,
    ) -> wasmtime::Result<T> {
        let began = Instant::now();
        self.spent.store(0, Relaxed);
        self.mark.store(0, Relaxed);
        self.limit.store(nanos(limit.cpu), Relaxed);
        self.started
            .store(nanos(began.saturating_duration_since(*START)), Relaxed);
        let mut entry = std::pin::pin!(entry);
        let mut deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        let mut first = true;
        std::future::poll_fn(|cx| {
            if !first {
                self.mark.store(thread_cpu(), Relaxed);
            }
            let polled = entry.as_mut().poll(cx);
            if first && self.mark.load(Relaxed) == 0 {
                // Unmeasured first poll, no tick met: its wall time.
                self.spent.fetch_add(self.first_poll(), Relaxed);
            } else {
                self.charge_poll(false);
            }
            first = false;
            if polled.is_ready() {
                return polled;
            }
            // Waiting (a host call, or yielding after a tick): the
            // wall-clock backstop, from the entry's start.
            let sleep = deadline.get_or_insert_with(|| {
                Box::pin(tokio::time::sleep_until((began + limit.wall).into()))
            });
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(TimeLimitExceeded::Wall(limit.wall).into())),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(d: Duration) {
        let until = thread_cpu() + nanos(d);
        while thread_cpu() < until {
            std::hint::black_box(0);
        }
    }

    #[test]
    fn the_wall_limit_is_a_backstop_above_the_cpu_limit() {
        let l = Limit::cpu(Duration::from_millis(500));
        assert_eq!(l.wall, Duration::from_millis(2500));
        let l = Limit::cpu(Duration::from_secs(2));
        assert_eq!(l.wall, Duration::from_secs(8));
    }

    #[tokio::test]
    async fn cpu_is_charged_over_polls_and_waits_are_not() {
        let m = Meter::default();
        let limit = Limit::cpu(Duration::from_secs(5));
        // A guest that computes 30 ms, waits 200 ms, computes 30 ms,
        // yielding between (as a guest does at each tick).
        let r = m
            .run(limit, async {
                spin(Duration::from_millis(30));
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                spin(Duration::from_millis(30));
                Ok(7)
            })
            .await
            .unwrap();
        assert_eq!(r, 7);
        let spent = m.spent();
        // The first poll is charged at most a tick (it ran 30 ms without
        // meeting one here: no epoch in this test); the rest exactly.
        assert!(spent >= Duration::from_millis(30), "{spent:?}");
        assert!(spent < Duration::from_millis(120), "{spent:?}");
    }

    #[tokio::test]
    async fn a_tick_past_the_cpu_limit_stops_the_guest() {
        let m = Meter::default();
        let limit = Limit::cpu(Duration::from_millis(50));
        let err = m
            .run(limit, async {
                loop {
                    spin(Duration::from_millis(10));
                    // What the epoch callback does at each tick.
                    match m.tick()? {
                        UpdateDeadline::Yield(_) => tokio::task::yield_now().await,
                        _ => unreachable!(),
                    }
                }
                #[allow(unreachable_code)]
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.downcast_ref::<TimeLimitExceeded>(),
            Some(&TimeLimitExceeded::Cpu(Duration::from_millis(50)))
        );
        assert!(m.spent() < Duration::from_millis(80), "{:?}", m.spent());
    }

    #[tokio::test]
    async fn a_wait_past_the_wall_limit_ends() {
        let m = Meter::default();
        let limit = Limit {
            cpu: Duration::from_millis(10),
            wall: Duration::from_millis(100),
        };
        let started = Instant::now();
        let err = m
            .run(limit, async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(matches!(
            err.downcast_ref::<TimeLimitExceeded>(),
            Some(TimeLimitExceeded::Wall(_))
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
