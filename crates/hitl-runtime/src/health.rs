//! Liveness and readiness, shared between the loop thread and the HTTP endpoint.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicI64, Ordering},
        Arc,
    },
    time::Duration,
};

use crate::pipeline::now_millis;

/// Cheap to clone; every clone sees the same state.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug)]
struct HealthInner {
    alive: AtomicBool,
    ready: AtomicBool,
    last_heartbeat_millis: AtomicI64,
    /// The loop is inside a hook that is bounded by its own timeout (a state restore, which may
    /// wait for a dead writer's transaction to end): not iterating, and not stalled.
    restoring: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            inner: Arc::new(HealthInner {
                alive: AtomicBool::new(true),
                ready: AtomicBool::new(false),
                last_heartbeat_millis: AtomicI64::new(now_millis()),
                restoring: AtomicBool::new(false),
            }),
        }
    }
}

impl Health {
    /// The loop is running its iterations.
    pub fn heartbeat(&self) {
        self.inner
            .last_heartbeat_millis
            .store(now_millis(), Ordering::Relaxed);
    }
    /// The loop enters (`true`) or leaves a restore, which bounds itself (`restore_timeout`).
    pub fn set_restoring(&self, restoring: bool) {
        self.inner.restoring.store(restoring, Ordering::Relaxed);
        self.heartbeat();
    }
    pub fn set_alive(&self, alive: bool) {
        self.inner.alive.store(alive, Ordering::Relaxed);
    }
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }
    /// Alive: the loop thread has not stopped and has iterated within `stall_after`, or is in a
    /// restore (bounded by its own timeout).
    pub fn is_alive(&self, stall_after: Duration) -> bool {
        let since = now_millis() - self.inner.last_heartbeat_millis.load(Ordering::Relaxed);
        self.inner.alive.load(Ordering::Relaxed)
            && (since <= stall_after.as_millis() as i64
                || self.inner.restoring.load(Ordering::Relaxed))
    }
    /// Ready: transactions initialised and subscribed.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }
}
