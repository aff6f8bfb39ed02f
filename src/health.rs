//! Component health reported by each stage and rendered by `GET /health`: outputs that cannot
//! deliver make the daemon unhealthy (503); degraded stages (no GeoIP database, alert mail off)
//! are listed but keep it healthy.

use serde::Serialize;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Working with reduced function; does not fail `/health`.
    Degraded,
    /// Cannot do its job (an unreachable output); fails `/health`.
    Down,
}

#[derive(Debug, Clone, Serialize)]
pub struct ComponentHealth {
    pub component: String,
    pub status: Status,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// A component's handle for reporting its state.
#[derive(Debug, Clone)]
pub struct HealthHandle(Arc<Mutex<ComponentHealth>>);

impl HealthHandle {
    pub fn set(&self, status: Status, reason: impl Into<String>) {
        // Short critical section, never held across an await.
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.status = status;
        state.reason = reason.into();
    }
    pub fn ok(&self) {
        self.set(Status::Ok, "");
    }
    pub fn get(&self) -> ComponentHealth {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// All components' health.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    components: Mutex<Vec<HealthHandle>>,
}

#[derive(Debug, Serialize)]
pub struct HealthReport {
    pub status: Status,
    pub components: Vec<ComponentHealth>,
}

impl HealthRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The handle for `component`; registering a name again returns the existing handle, so a
    /// stage built more than once (validation, then run) reports through one entry.
    pub fn register(&self, component: impl Into<String>) -> HealthHandle {
        let component = component.into();
        let mut components = self.components.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = components.iter().find(|h| h.get().component == component) {
            return existing.clone();
        }
        let handle = HealthHandle(Arc::new(Mutex::new(ComponentHealth {
            component,
            status: Status::Ok,
            reason: String::new(),
        })));
        components.push(handle.clone());
        handle
    }

    pub fn report(&self) -> HealthReport {
        let components: Vec<ComponentHealth> = self
            .components
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(HealthHandle::get)
            .collect();
        let status = if components.iter().any(|c| c.status == Status::Down) {
            Status::Down
        } else if components.iter().any(|c| c.status == Status::Degraded) {
            Status::Degraded
        } else {
            Status::Ok
        };
        HealthReport { status, components }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_component_decides() {
        let r = HealthRegistry::new();
        let es = r.register("output elasticsearch");
        let geo = r.register("filter geoip");
        assert_eq!(r.report().status, Status::Ok);
        geo.set(Status::Degraded, "database missing");
        assert_eq!(r.report().status, Status::Degraded);
        es.set(Status::Down, "connection refused");
        let report = r.report();
        assert_eq!(report.status, Status::Down);
        assert_eq!(report.components[0].reason, "connection refused");
        es.ok();
        assert_eq!(r.report().status, Status::Degraded);
        let again = r.register("filter geoip");
        again.ok();
        assert_eq!(r.report().components.len(), 2);
        assert_eq!(r.report().status, Status::Ok);
    }
}
