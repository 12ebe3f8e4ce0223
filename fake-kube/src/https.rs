//! The HTTPS transport: the fake on 127.0.0.1:0 with its own CA (HTTP/1.1 and HTTP/2 by ALPN),
//! and kubeconfig files that reach it, for tests that run the adapter as a process and for
//! benchmarks. Faults apply as in process; `Down::Refused` also cuts every open connection and
//! drops new ones, and [`Served::stop`] takes the listener away altogether.

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::faults::Transport;
use crate::{ADAPTER_TOKEN, FakeKube, lock};

/// Why the HTTPS transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No temporary directory for the kubeconfig and CA files.
    #[error("creating a temporary directory for the kubeconfig")]
    TempDir(#[source] std::io::Error),
    /// A file could not be written.
    #[error("writing {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA or serving certificate could not be generated.
    #[error("generating the fake API server's CA and certificate")]
    Certificate(#[source] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("building the fake API server's TLS configuration")]
    Tls(#[source] rustls::Error),
    /// The listener could not be bound.
    #[error("binding {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The fake served over HTTPS. Derefs to the [`FakeKube`] it serves; stops when dropped.
#[derive(Debug)]
pub struct Served {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The PEM of the CA its serving certificate chains to.
    pub ca_pem: String,
    /// A kubeconfig that reaches it with [`ADAPTER_TOKEN`] (for `--kubeconfig`).
    pub kubeconfig: PathBuf,
    fake: FakeKube,
    tls: Arc<rustls::ServerConfig>,
    running: Mutex<Option<JoinHandle<()>>>,
    kubeconfigs: AtomicUsize,
    dir: tempfile::TempDir,
}

impl Deref for Served {
    type Target = FakeKube;

    fn deref(&self) -> &FakeKube {
        &self.fake
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}

impl FakeKube {
    /// A new fake, served over HTTPS (see [`FakeKube::serve`]).
    pub async fn start() -> Result<Served, Error> {
        FakeKube::new().serve().await
    }

    /// Serve this fake over HTTPS on 127.0.0.1:0, with a new CA, writing the CA and a
    /// kubeconfig for [`ADAPTER_TOKEN`] into a temporary directory (removed on drop).
    pub async fn serve(&self) -> Result<Served, Error> {
        let dir = tempfile::tempdir().map_err(Error::TempDir)?;
        let (ca_pem, chain, key) = certificates().map_err(Error::Certificate)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(Error::Tls)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(Error::Tls)?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener = TcpListener::bind(any_port)
            .await
            .map_err(|source| Error::Bind {
                addr: any_port,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: any_port,
            source,
        })?;
        let ca_path = dir.path().join("kube-ca.pem");
        write(&ca_path, &ca_pem)?;
        let kubeconfig = dir.path().join("kubeconfig");
        write(&kubeconfig, &kubeconfig_text(addr, &ca_path, ADAPTER_TOKEN))?;
        let served = Served {
            addr,
            ca_pem,
            kubeconfig,
            fake: self.clone(),
            tls: Arc::new(tls),
            running: Mutex::new(None),
            kubeconfigs: AtomicUsize::new(0),
            dir,
        };
        served.spawn(listener);
        Ok(served)
    }
}

impl Served {
    /// `--kubeconfig=<path>` for the adapter.
    pub fn kubeconfig_arg(&self) -> String {
        format!("--kubeconfig={}", self.kubeconfig.display())
    }

    /// The API server's URL.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// A kubeconfig that reaches the fake presenting `token` (accepted from now on): one per
    /// replica, so a fault can cut off one of them.
    pub fn kubeconfig_for(&self, token: &str) -> Result<PathBuf, Error> {
        let n = self.kubeconfigs.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("kubeconfig-{n}"));
        self.write_kubeconfig(&path, token)?;
        Ok(path)
    }

    /// Write a kubeconfig that reaches the fake presenting `token` (accepted from now on) to
    /// `path`. It names the CA file in the fake's own directory, so it works while the fake
    /// lives.
    pub fn write_kubeconfig(&self, path: &Path, token: &str) -> Result<(), Error> {
        self.fake.add_caller(token);
        let ca_path = self.dir.path().join("kube-ca.pem");
        write(path, &kubeconfig_text(self.addr, &ca_path, token))
    }

    /// Drop the listener and every open connection: the API server is gone.
    pub fn stop(&self) {
        if let Some(task) = lock(&self.running).take() {
            task.abort();
        }
    }

    /// Come back on the same address.
    pub async fn restart(&self) -> Result<(), Error> {
        self.stop();
        let listener = TcpListener::bind(self.addr)
            .await
            .map_err(|source| Error::Bind {
                addr: self.addr,
                source,
            })?;
        self.spawn(listener);
        Ok(())
    }

    fn spawn(&self, listener: TcpListener) {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        let fake = self.fake.clone();
        let task = tokio::spawn(async move {
            // Dropping this set (when the task is aborted) aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        // Out of file descriptors, most likely: do not spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                if fake.faults().refusing() {
                    continue;
                }
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let fake = fake.clone();
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = TowerToHyperService::new(Transport::new(fake.clone(), None));
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let connection = builder.serve_connection(TokioIo::new(tls), service);
                    // An outage with refused connections cuts the open ones too.
                    tokio::select! {
                        _ = connection => {}
                        () = fake.faults().until_refusing() => {}
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        *lock(&self.running) = Some(task);
    }
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn kubeconfig_text(addr: SocketAddr, ca_path: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\nusers:\n- name: adapter\n  user:\n    token: {token}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: adapter\ncurrent-context: fake\n",
        addr.port(),
        ca_path.display()
    )
}

/// A new CA (PEM) and a serving certificate for localhost and 127.0.0.1 signed by it.
fn certificates()
-> Result<(String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "fake-kube-apiserver-ca");
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((ca_cert.pem(), vec![cert.der().clone()], key))
}
