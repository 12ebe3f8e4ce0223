//! Where the trusted CAs come from, and how they are kept current without a restart: the
//! cluster's `kube-system/extension-apiserver-authentication` ConfigMap (read at start, then
//! watched), or files named by flags (re-read on an interval, as serving certificates are).
//!
//! A change that does not parse keeps what is trusted now, as kube's dynamic CA controllers do;
//! so does the ConfigMap disappearing or losing a key.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, WatchEvent, WatchParams};
use tokio_util::sync::CancellationToken;

use super::trust::{CaBundle, RequestHeaderSettings, RequestHeaderTrust, TrustStore};

/// The ConfigMap's namespace.
pub const NAMESPACE: &str = "kube-system";
/// The ConfigMap kube-apiserver publishes its client and front-proxy CAs in.
pub const NAME: &str = "extension-apiserver-authentication";

const CLIENT_CA_KEY: &str = "client-ca-file";
const REQUESTHEADER_CA_KEY: &str = "requestheader-client-ca-file";
const ALLOWED_NAMES_KEY: &str = "requestheader-allowed-names";
const USERNAME_HEADERS_KEY: &str = "requestheader-username-headers";
const GROUP_HEADERS_KEY: &str = "requestheader-group-headers";
const EXTRA_PREFIXES_KEY: &str = "requestheader-extra-headers-prefix";
const UID_HEADERS_KEY: &str = "requestheader-uid-headers";

/// Front-proxy header settings as flags give them (kube-apiserver's names and defaults); used
/// with `--requestheader-client-ca-file`, and for keys an older ConfigMap lacks.
#[derive(Debug, Clone, Default)]
pub struct HeaderFlags {
    /// `--requestheader-allowed-names`.
    pub allowed_names: Vec<String>,
    /// `--requestheader-username-headers`.
    pub username_headers: Vec<String>,
    /// `--requestheader-group-headers`.
    pub group_headers: Vec<String>,
    /// `--requestheader-uid-headers`.
    pub uid_headers: Vec<String>,
    /// `--requestheader-extra-headers-prefix`.
    pub extra_prefixes: Vec<String>,
}

impl HeaderFlags {
    /// The settings these flags describe.
    pub fn settings(&self) -> Result<RequestHeaderSettings, String> {
        RequestHeaderSettings::new(
            self.allowed_names.clone(),
            &self.username_headers,
            &self.group_headers,
            &self.uid_headers,
            &self.extra_prefixes,
        )
        .map_err(|err| err.to_string())
    }
}

/// Which halves of the trust the ConfigMap provides (flags provide the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FromCluster {
    /// The front-proxy CA and its settings.
    pub request_header: bool,
    /// The client CA.
    pub client_ca: bool,
}

impl FromCluster {
    /// Whether the ConfigMap is needed at all.
    pub fn any(self) -> bool {
        self.request_header || self.client_ca
    }
}

/// What one version of the ConfigMap says: each half absent, usable, or broken.
#[derive(Debug)]
pub struct ConfigMapTrust {
    /// From the `requestheader-*` keys.
    pub request_header: Result<Option<RequestHeaderTrust>, String>,
    /// From `client-ca-file`.
    pub client_ca: Result<Option<CaBundle>, String>,
}

/// Read the ConfigMap's data as kube-apiserver writes it (lists as JSON arrays).
pub fn parse_configmap(data: &BTreeMap<String, String>, defaults: &HeaderFlags) -> ConfigMapTrust {
    let client_ca = match data.get(CLIENT_CA_KEY).filter(|pem| !pem.trim().is_empty()) {
        None => Ok(None),
        Some(pem) => CaBundle::from_pem(pem.as_bytes())
            .map(Some)
            .map_err(|err| format!("{CLIENT_CA_KEY}: {err}")),
    };
    let request_header = match data
        .get(REQUESTHEADER_CA_KEY)
        .filter(|pem| !pem.trim().is_empty())
    {
        None => Ok(None),
        Some(pem) => (|| {
            let ca = CaBundle::from_pem(pem.as_bytes())
                .map_err(|err| format!("{REQUESTHEADER_CA_KEY}: {err}"))?;
            let list = |key: &str, default: &[String]| -> Result<Vec<String>, String> {
                match data.get(key) {
                    None => Ok(default.to_vec()),
                    Some(text) if text.trim().is_empty() => Ok(Vec::new()),
                    Some(text) => serde_json::from_str::<Vec<String>>(text)
                        .map_err(|err| format!("{key}: not a JSON list of strings: {err}")),
                }
            };
            let settings = RequestHeaderSettings::new(
                list(ALLOWED_NAMES_KEY, &defaults.allowed_names)?,
                &list(USERNAME_HEADERS_KEY, &defaults.username_headers)?,
                &list(GROUP_HEADERS_KEY, &defaults.group_headers)?,
                &list(UID_HEADERS_KEY, &defaults.uid_headers)?,
                &list(EXTRA_PREFIXES_KEY, &defaults.extra_prefixes)?,
            )
            .map_err(|err| format!("requestheader headers: {err}"))?;
            Ok(Some(RequestHeaderTrust { ca, settings }))
        })(),
    };
    ConfigMapTrust {
        request_header,
        client_ca,
    }
}

/// Apply the wanted halves of a parsed ConfigMap. At start (`initial`) a broken half is an error
/// and a missing one turns that kind of authentication off; later, both keep what is trusted.
pub fn apply(
    store: &TrustStore,
    parsed: ConfigMapTrust,
    wanted: FromCluster,
    initial: bool,
) -> Result<(), String> {
    let what = format!("ConfigMap {NAMESPACE}/{NAME}");
    if wanted.request_header {
        match parsed.request_header {
            Ok(Some(trust)) => {
                let current = store.current();
                let unchanged = current.request_header.as_ref().is_some_and(|old| {
                    old.ca.pem() == trust.ca.pem() && old.settings == trust.settings
                });
                if !unchanged {
                    store.set_request_header(Some(Arc::new(trust)));
                    tracing::info!(source = %what, "front-proxy (requestheader) CA loaded");
                }
            }
            Ok(None) if initial => {
                store.set_request_header(None);
                tracing::warn!(source = %what, "no {REQUESTHEADER_CA_KEY}: requests through kube-apiserver's aggregator cannot be authenticated");
            }
            Ok(None) => {
                tracing::warn!(source = %what, "{REQUESTHEADER_CA_KEY} is gone; keeping the front-proxy CA in use")
            }
            Err(err) if initial => return Err(format!("{what}: {err}")),
            Err(err) => {
                tracing::warn!(source = %what, error = %err, "keeping the front-proxy CA in use")
            }
        }
    }
    if wanted.client_ca {
        match parsed.client_ca {
            Ok(Some(ca)) => {
                let unchanged = store
                    .current()
                    .client_ca
                    .as_ref()
                    .is_some_and(|old| old.pem() == ca.pem());
                if !unchanged {
                    store.set_client_ca(Some(Arc::new(ca)));
                    tracing::info!(source = %what, "client CA loaded");
                }
            }
            Ok(None) if initial => {
                store.set_client_ca(None);
                tracing::warn!(source = %what, "no {CLIENT_CA_KEY}: client certificates are not accepted as identities");
            }
            Ok(None) => {
                tracing::warn!(source = %what, "{CLIENT_CA_KEY} is gone; keeping the client CA in use")
            }
            Err(err) if initial => return Err(format!("{what}: {err}")),
            Err(err) => {
                tracing::warn!(source = %what, error = %err, "keeping the client CA in use")
            }
        }
    }
    Ok(())
}

/// Read the ConfigMap once; returns its resourceVersion, to watch from.
pub async fn load(
    api: &Api<ConfigMap>,
    store: &TrustStore,
    wanted: FromCluster,
    defaults: &HeaderFlags,
    initial: bool,
) -> Result<String, String> {
    let configmap = api
        .get(NAME)
        .await
        .map_err(|err| format!("cannot read ConfigMap {NAMESPACE}/{NAME}: {err}"))?;
    let data = configmap.data.unwrap_or_default();
    apply(store, parse_configmap(&data, defaults), wanted, initial)?;
    Ok(configmap.metadata.resource_version.unwrap_or_default())
}

/// Follow the ConfigMap until `stop`: watch from `resource_version`, re-read it after errors or
/// an expired watch (with backoff up to 30 s), apply every change.
pub async fn watch_configmap(
    api: Api<ConfigMap>,
    store: Arc<TrustStore>,
    wanted: FromCluster,
    defaults: HeaderFlags,
    mut resource_version: String,
    stop: CancellationToken,
) {
    let params = WatchParams::default()
        .fields(&format!("metadata.name={NAME}"))
        .timeout(290);
    let mut backoff = Duration::from_secs(1);
    let mut relist = false;
    loop {
        if relist {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            match load(&api, &store, wanted, &defaults, false).await {
                Ok(version) => {
                    resource_version = version;
                    relist = false;
                    backoff = Duration::from_secs(1);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "authentication ConfigMap not re-read; keeping the CAs in use");
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            }
        }
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            stream = api.watch(&params, &resource_version) => stream,
        };
        let stream = match stream {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch the authentication ConfigMap; retrying");
                relist = true;
                continue;
            }
        };
        let mut stream = std::pin::pin!(stream);
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return,
                event = stream.next() => event,
            };
            match event {
                // The server ended the watch (timeout): resume from where it was.
                None => break,
                Some(Ok(WatchEvent::Added(configmap) | WatchEvent::Modified(configmap))) => {
                    if let Some(version) = configmap.metadata.resource_version.clone() {
                        resource_version = version;
                    }
                    let data = configmap.data.unwrap_or_default();
                    let _ = apply(&store, parse_configmap(&data, &defaults), wanted, false);
                    backoff = Duration::from_secs(1);
                }
                Some(Ok(WatchEvent::Deleted(configmap))) => {
                    if let Some(version) = configmap.metadata.resource_version {
                        resource_version = version;
                    }
                    tracing::warn!(
                        "ConfigMap {NAMESPACE}/{NAME} was deleted; keeping the CAs in use"
                    );
                }
                Some(Ok(WatchEvent::Bookmark(bookmark))) => {
                    resource_version = bookmark.metadata.resource_version;
                }
                Some(Ok(WatchEvent::Error(status))) => {
                    // 410 Gone: the version is too old to resume from; anything else: start over.
                    tracing::debug!(
                        code = status.code,
                        "authentication ConfigMap watch ended: {}",
                        status.message
                    );
                    relist = true;
                    break;
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "authentication ConfigMap watch failed; re-reading");
                    relist = true;
                    break;
                }
            }
        }
    }
}

/// Which half of the trust a CA file provides.
#[derive(Debug, Clone)]
pub enum FileRole {
    /// `--requestheader-client-ca-file`, with the front-proxy settings from flags.
    RequestHeader(RequestHeaderSettings),
    /// `--client-ca-file`.
    ClientCa,
}

/// Load a CA file into `store` as `role`.
pub fn load_file(store: &TrustStore, path: &PathBuf, role: &FileRole) -> Result<Vec<u8>, String> {
    let pem =
        std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let ca = CaBundle::from_pem(&pem).map_err(|err| format!("{}: {err}", path.display()))?;
    match role {
        FileRole::RequestHeader(settings) => {
            store.set_request_header(Some(Arc::new(RequestHeaderTrust {
                ca,
                settings: settings.clone(),
            })))
        }
        FileRole::ClientCa => store.set_client_ca(Some(Arc::new(ca))),
    }
    Ok(pem)
}

/// Re-read a CA file every `interval` until `stop`, swapping it in when it changed and parses.
pub async fn watch_file(
    store: Arc<TrustStore>,
    path: PathBuf,
    role: FileRole,
    mut last: Vec<u8>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match std::fs::read(&path) {
            Ok(pem) if pem == last => {}
            Ok(pem) => match load_file(&store, &path, &role) {
                Ok(_) => {
                    last = pem;
                    tracing::info!(file = %path.display(), "client CA file reloaded");
                }
                Err(err) => {
                    tracing::warn!(error = %err, "new CA file not usable; keeping the CA in use")
                }
            },
            Err(err) => {
                tracing::warn!(file = %path.display(), error = %err, "cannot re-read CA file; keeping the CA in use")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    fn ca_pem(name: &str) -> String {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .pem()
    }

    fn defaults() -> HeaderFlags {
        HeaderFlags {
            allowed_names: vec![],
            username_headers: vec!["X-Remote-User".into()],
            group_headers: vec!["X-Remote-Group".into()],
            uid_headers: vec!["X-Remote-Uid".into()],
            extra_prefixes: vec!["X-Remote-Extra-".into()],
        }
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const BOTH: FromCluster = FromCluster {
        request_header: true,
        client_ca: true,
    };

    #[test]
    fn reads_the_configmap_as_kube_apiserver_writes_it() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let proxy = ca_pem("front-proxy-ca");
        let client = ca_pem("kubernetes");
        let parsed = parse_configmap(
            &data(&[
                (CLIENT_CA_KEY, &client),
                (REQUESTHEADER_CA_KEY, &proxy),
                (ALLOWED_NAMES_KEY, r#"["front-proxy-client"]"#),
                (USERNAME_HEADERS_KEY, r#"["X-Remote-User"]"#),
                (GROUP_HEADERS_KEY, r#"["X-Remote-Group"]"#),
                (EXTRA_PREFIXES_KEY, r#"["X-Remote-Extra-"]"#),
                (UID_HEADERS_KEY, r#"["X-Remote-Uid"]"#),
            ]),
            &defaults(),
        );
        let request_header = parsed.request_header.unwrap().unwrap();
        assert_eq!(
            request_header.settings.allowed_names,
            ["front-proxy-client"]
        );
        assert_eq!(request_header.settings.extra_prefixes, ["x-remote-extra-"]);
        assert_eq!(request_header.ca.pem(), proxy.as_bytes());
        assert_eq!(parsed.client_ca.unwrap().unwrap().pem(), client.as_bytes());
    }

    #[test]
    fn broken_keys_fail_at_start_and_are_ignored_later() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let proxy = ca_pem("front-proxy-ca");
        let store = TrustStore::new(None, None);
        apply(
            &store,
            parse_configmap(&data(&[(REQUESTHEADER_CA_KEY, &proxy)]), &defaults()),
            BOTH,
            true,
        )
        .unwrap();
        let current = store.current();
        let loaded = current.request_header.as_ref().unwrap();
        // Keys an older cluster lacks fall back to the flags' defaults.
        assert_eq!(
            loaded.settings.username_headers[0].as_str(),
            "x-remote-user"
        );
        assert!(current.client_ca.is_none());

        let broken = data(&[
            (REQUESTHEADER_CA_KEY, "not pem"),
            (ALLOWED_NAMES_KEY, "front-proxy-client"),
        ]);
        let err = apply(&store, parse_configmap(&broken, &defaults()), BOTH, true).unwrap_err();
        assert!(err.contains(REQUESTHEADER_CA_KEY), "{err}");
        // Later, the same breakage (or a vanished key) keeps what is trusted.
        apply(&store, parse_configmap(&broken, &defaults()), BOTH, false).unwrap();
        apply(
            &store,
            parse_configmap(&data(&[]), &defaults()),
            BOTH,
            false,
        )
        .unwrap();
        assert_eq!(
            store.current().request_header.as_ref().unwrap().ca.pem(),
            proxy.as_bytes()
        );
        let bad_list = data(&[
            (REQUESTHEADER_CA_KEY, &proxy),
            (ALLOWED_NAMES_KEY, "front-proxy-client"),
        ]);
        let err = parse_configmap(&bad_list, &defaults())
            .request_header
            .unwrap_err();
        assert!(
            err.contains("requestheader-allowed-names: not a JSON list"),
            "{err}"
        );
    }
}
