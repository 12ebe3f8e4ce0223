//! Certificate rotation the way Kubernetes Secret volumes do it (an atomic `..data` symlink swap),
//! under continuous load, with zero failed requests.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cloudwatch_emulator::Emulator;
use common::{DEFINITIONS, TestCa, TestServer, client_trusting, serve_config};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Write a Secret-volume style directory version and point `..data` at it atomically.
fn publish(dir: &Path, version: &str, cert: &str, key: &str) {
    let versioned = dir.join(version);
    std::fs::create_dir(&versioned).unwrap();
    std::fs::write(versioned.join("tls.crt"), cert).unwrap();
    std::fs::write(versioned.join("tls.key"), key).unwrap();
    let tmp = dir.join("..data_tmp");
    symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for file in ["tls.crt", "tls.key"] {
        let link = dir.join(file);
        if !link.exists() {
            symlink(format!("..data/{file}"), &link).unwrap();
        }
    }
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_drops_no_request() {
    common::install_crypto();
    let emulator = Emulator::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    let ca = TestCa::new("rotation-ca");
    let (first_cert, first_key) = ca.leaf("first");
    let (second_cert, second_key) = ca.leaf("second");
    publish(&secret, "..2026_11_21_a", &first_cert, &first_key);
    let config_path = dir.path().join("metrics.yaml");
    std::fs::write(&config_path, DEFINITIONS).unwrap();
    let config = serve_config(
        &config_path,
        &secret.join("tls.crt"),
        &secret.join("tls.key"),
        &[],
    );
    let ca_pem = ca.pem.clone();
    let server = TestServer::run(config, &emulator, ca, dir).await;
    let url = format!("{}/apis/external.metrics.k8s.io/v1beta1", server.base());

    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let rotated_seen = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let new_der = der(&second_cert);
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (url, ca_pem, ok, failed, rotated_seen, stop, new_der) = (
            url.clone(),
            ca_pem.clone(),
            ok.clone(),
            failed.clone(),
            rotated_seen.clone(),
            stop.clone(),
            new_der.clone(),
        );
        workers.push(tokio::spawn(async move {
            // Even workers keep one connection alive; odd ones handshake for every request.
            let keep_alive = worker % 2 == 0;
            let shared = client_trusting(&ca_pem).tls_info(true).build().unwrap();
            while !stop.load(Ordering::Relaxed) {
                let client = if keep_alive {
                    shared.clone()
                } else {
                    client_trusting(&ca_pem).tls_info(true).build().unwrap()
                };
                match client.get(&url).send().await {
                    Ok(response) if response.status() == 200 => {
                        let peer = response
                            .extensions()
                            .get::<reqwest::tls::TlsInfo>()
                            .and_then(|info| info.peer_certificate().map(<[u8]>::to_vec));
                        if peer.as_deref() == Some(new_der.as_slice()) {
                            rotated_seen.store(true, Ordering::Relaxed);
                        }
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = ok.load(Ordering::Relaxed);
    publish(&secret, "..2026_11_21_b", &second_cert, &second_key);
    std::fs::remove_dir_all(secret.join("..2026_11_21_a")).unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    while !rotated_seen.load(Ordering::Relaxed) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Keep the load on a little after the swap, through both connection styles.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(
        rotated_seen.load(Ordering::Relaxed),
        "new certificate never served"
    );
    assert!(before > 0, "no load before the rotation");
    assert!(
        ok.load(Ordering::Relaxed) > before,
        "no load after the rotation"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during rotation"
    );
    server.stop().await.unwrap();
}
