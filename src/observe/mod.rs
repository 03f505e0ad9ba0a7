//! Observability: what the gateway records about its traffic. [`metrics`] (Prometheus, names in
//! one place), the access log and traces; all written off the request path.

pub mod metrics;
