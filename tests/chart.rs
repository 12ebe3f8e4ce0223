//! The chart's rendered delegate configuration is what the adapter accepts: `helm template` with
//! the KEDA preset and further delegates, then the adapter's own validation of the file it would
//! be started with. Needs ./tools (helm) from scripts/fetch-tools.sh; built only with
//! `--features peer-tests`.
#![allow(clippy::unwrap_used)]

mod common;

use clap::Parser;
use cloudwatch_metrics_adapter::config::{Cli, Command};
use cloudwatch_metrics_adapter::delegate::config::CaSource;
use common::{path_str, tool};
use serde_json::Value;

#[test]
fn the_rendered_delegates_file_is_valid_for_the_adapter() {
    common::install_crypto();
    let chart = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/cloudwatch-metrics-adapter"
    );
    let output = std::process::Command::new(tool("helm/helm"))
        .args(["template", "r", chart, "--namespace", "cwma"])
        .args(["--set", "delegate.keda.enabled=true", "--set", "delegate.timeout=2s"])
        .args([
            "--set-json",
            r#"delegate.others=[{"name":"datadog","url":"https://datadog-cluster-agent-metrics-api.datadog.svc:8443","ca":{"insecureSkipTLSVerify":true},"match":{"namePattern":"^datadogmetric@"}},{"name":"prometheus-adapter","url":"https://prometheus-adapter.monitoring.svc","ca":{"secret":{"namespace":"monitoring","name":"prometheus-adapter-ca"}}}]"#,
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rendered = String::from_utf8(output.stdout).unwrap();
    let documents: Vec<Value> = serde_saphyr::from_multiple(&rendered).unwrap();
    let configmap = documents
        .iter()
        .find(|doc| doc["data"]["delegates.yaml"].is_string())
        .unwrap();
    let args: Vec<String> = documents
        .iter()
        .find(|doc| doc["kind"] == "Deployment")
        .unwrap()["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();

    // In the pod the ServiceAccount token is mounted; here a file stands in for it.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let mut file: Value =
        serde_saphyr::from_str(configmap["data"]["delegates.yaml"].as_str().unwrap()).unwrap();
    for entry in file["delegates"].as_array_mut().unwrap() {
        entry["auth"] = serde_json::json!({"tokenFile": path_str(&token)});
    }
    let path = dir.path().join("delegates.yaml");
    std::fs::write(&path, serde_saphyr::to_string(&file).unwrap()).unwrap();

    // The chart's delegate flags, with the file path swapped for the local copy.
    let mut argv = vec![
        "cloudwatch-metrics-adapter".to_string(),
        "serve".to_string(),
    ];
    for arg in args.iter().filter(|a| a.starts_with("--delegate")) {
        if arg.starts_with("--delegates-config=") {
            argv.push(format!("--delegates-config={}", path_str(&path)));
        } else {
            argv.push(arg.clone());
        }
    }
    assert!(
        argv.iter().any(|a| a == "--delegate-timeout=2s"),
        "{argv:?}"
    );
    let Command::Serve(config) = Cli::try_parse_from(&argv).unwrap().command else {
        panic!("serve");
    };
    let delegates = config.delegate.resolve().unwrap();
    let names: Vec<&str> = delegates.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["keda", "datadog", "prometheus-adapter"]);
    let keda = &delegates[0];
    assert_eq!(
        keda.url_text(),
        "https://keda-operator-metrics-apiserver.keda.svc:443"
    );
    assert_eq!(
        keda.ca,
        CaSource::Secret {
            namespace: "keda".into(),
            name: "kedaorg-certs".into(),
            key: "ca.crt".into()
        }
    );
    assert!(
        keda.rules
            .name_pattern
            .as_ref()
            .unwrap()
            .is_match("s0-rabbitmq-orders")
    );
    assert!(
        !keda
            .rules
            .name_pattern
            .as_ref()
            .unwrap()
            .is_match("sqs-visible")
    );
    assert_eq!(
        keda.rules.selector_key.as_deref(),
        Some("scaledobject.keda.sh/name")
    );
    assert_eq!(keda.timeout, std::time::Duration::from_secs(2));
    assert_eq!(delegates[1].ca, CaSource::InsecureSkipVerify);
}
