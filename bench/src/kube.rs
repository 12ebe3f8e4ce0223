//! The fake Kubernetes API server for benchmarks: the workspace's one fake (`fake-kube`) over
//! HTTPS on 127.0.0.1, answering `SubjectAccessReview` and `TokenReview` as kube-apiserver does,
//! with the access policy a benchmark asks for. It counts the reviews it answers, so a benchmark
//! can show how many reached the cluster.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The bearer token in the kubeconfig the fake writes (the adapter's service account token).
pub use fake_kube::ADAPTER_TOKEN;

/// Who `SubjectAccessReview` allows.
#[derive(Debug, Clone)]
pub enum AccessPolicy {
    /// Every request.
    AllowAll,
    /// Any request by these users.
    AllowUsers(HashSet<String>),
}

/// The running fake; stops when dropped.
#[derive(Debug)]
pub struct FakeKube {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A kubeconfig reaching it with [`ADAPTER_TOKEN`] (for `--kubeconfig`).
    pub kubeconfig: PathBuf,
    served: fake_kube::Served,
}

impl FakeKube {
    /// Start on 127.0.0.1:0 with its own CA, writing the kubeconfig into `dir`.
    /// `tokens` are (token, user, groups) that `TokenReview` authenticates.
    pub async fn start(
        dir: &Path,
        policy: AccessPolicy,
        tokens: Vec<(String, String, Vec<String>)>,
    ) -> anyhow::Result<FakeKube> {
        let fake = fake_kube::FakeKube::new();
        match policy {
            AccessPolicy::AllowAll => fake.allow_all(),
            AccessPolicy::AllowUsers(users) => {
                for user in users {
                    fake.allow_user(&user);
                }
            }
        }
        for (token, user, groups) in &tokens {
            let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
            fake.add_token(token, user, "", &groups);
        }
        let served = fake
            .serve()
            .await
            .context("starting the fake Kubernetes API server")?;
        let kubeconfig = dir.join("kubeconfig");
        served
            .write_kubeconfig(&kubeconfig, ADAPTER_TOKEN)
            .context("writing the kubeconfig")?;
        Ok(FakeKube {
            addr: served.addr,
            kubeconfig,
            served,
        })
    }

    /// `SubjectAccessReview`s answered so far.
    pub fn access_reviews(&self) -> u64 {
        self.served.access_review_count() as u64
    }
}
