//! Benchmark building blocks, shared by the benchmarks in `src/main.rs` (and any later one):
//! generated certificates, requests as kube-apiserver's aggregator sends them, a fake
//! Kubernetes API server answering reviews, the adapter as a process (and as replicas with
//! leader election), the load generator, and the adapter's `/metrics` parsed.

pub mod adapter;
pub mod aggregator;
pub mod certs;
pub mod ha;
pub mod instructions;
pub mod kube;
pub mod load;
pub mod scrape;
