//! cloudwatch-metrics-adapter: the Kubernetes external metrics API (`external.metrics.k8s.io`)
//! answered from AWS CloudWatch `GetMetricData`.
//!
//! The pipeline, by stage: [`definition`] (what a metric name means), [`series`] (the table of
//! series HPAs asked for, their values and staleness), [`engine`] (when series are refreshed:
//! the grid, pacing, back-off, failure isolation) and [`source`] (how values are read from a
//! backend; the only modules that touch the AWS SDK).
//!
//! Layering: [`api`] (HTTP) sees only [`provider`] and [`forward`]; [`auth`] decides who may call
//! (and never sees AWS or engine types); [`forward`] is the seam to the cluster's other
//! external-metrics providers, implemented by [`delegate`]; [`app`] wires everything together.

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod controller;
pub mod crd;
pub mod definition;
pub mod delegate;
pub mod engine;
pub mod file_watch;
pub mod forward;
pub mod leader;
pub mod metrics;
pub(crate) mod pacer;
pub mod peer;
pub mod provider;
pub mod remote;
pub mod series;
pub mod server;
pub mod source;
pub mod telemetry;
pub mod tls;
