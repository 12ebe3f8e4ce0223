//! cloudwatch-metrics-adapter: the Kubernetes external metrics API (`external.metrics.k8s.io`)
//! answered from AWS CloudWatch `GetMetricData`.
//!
//! Layering: [`api`] (HTTP) sees only [`provider`] and [`forward`]; [`cloudwatch`] translates definitions into
//! queries and is the only module that touches the AWS SDK; [`auth`] decides who may call (and
//! never sees AWS or cache types); [`forward`] is the seam to the cluster's other
//! external-metrics providers, implemented by [`delegate`]; [`app`] wires everything together.

pub mod api;
pub mod app;
pub mod auth;
pub mod cache;
pub mod cloudwatch;
pub mod config;
pub mod controller;
pub mod crd;
pub mod definition;
pub mod delegate;
pub mod forward;
pub mod metrics;
pub mod provider;
pub mod server;
pub mod telemetry;
pub mod tls;
