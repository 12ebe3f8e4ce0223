//! Benchmark building blocks, shared by the benchmarks in `src/main.rs` (and any later one):
//! generated certificates, requests as kube-apiserver's aggregator sends them, a fake
//! Kubernetes API server answering reviews, the adapter as a process, and the load generator.

pub mod adapter;
pub mod aggregator;
pub mod certs;
pub mod instructions;
pub mod kube;
pub mod load;
