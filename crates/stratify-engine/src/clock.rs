//! Time is injected: production reads the system clock, tests move a manual one.

use std::sync::atomic::{AtomicI64, Ordering};
use stratify_core::time::Millis;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Millis;

    /// Registers `wake` to be called whenever the clock jumps (a manual clock
    /// being moved). Real time needs none: whoever waits sleeps until the
    /// instant it wants.
    fn on_jump(&self, wake: Box<dyn Fn() + Send + Sync>) {
        drop(wake);
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        since.as_millis() as Millis
    }
}

type Wake = Box<dyn Fn() + Send + Sync>;

/// A clock that only moves when told to; whoever waits on it is woken.
pub struct ManualClock {
    now: AtomicI64,
    wakers: parking_lot::Mutex<Vec<Wake>>,
}

impl std::fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ManualClock").field(&self.now()).finish()
    }
}

impl ManualClock {
    pub fn new(start: Millis) -> Self {
        Self {
            now: AtomicI64::new(start),
            wakers: parking_lot::Mutex::new(Vec::new()),
        }
    }

    pub fn set(&self, now: Millis) {
        self.now.store(now, Ordering::SeqCst);
        self.wake();
    }

    pub fn advance(&self, by: Millis) {
        self.now.fetch_add(by, Ordering::SeqCst);
        self.wake();
    }

    fn wake(&self) {
        for w in self.wakers.lock().iter() {
            w();
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.now.load(Ordering::SeqCst)
    }

    fn on_jump(&self, wake: Wake) {
        self.wakers.lock().push(wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1000);
        assert_eq!(c.now(), 1000);
        c.advance(500);
        assert_eq!(c.now(), 1500);
        let woken = std::sync::Arc::new(AtomicI64::new(0));
        let w = woken.clone();
        c.on_jump(Box::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        }));
        c.set(7);
        assert_eq!(c.now(), 7);
        assert_eq!(woken.load(Ordering::SeqCst), 1);
    }
}
