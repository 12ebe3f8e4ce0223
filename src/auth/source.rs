//! Where the trusted CAs come from, and how they are kept current without a restart: the
//! cluster's `kube-system/extension-apiserver-authentication` ConfigMap (followed with a
//! kube-runtime watcher: list, then watch from the list's version with bookmarks, relist when
//! the version is too old, back off on errors), or files named by flags (re-read on an
//! interval by [`crate::file_watch`], as serving certificates are, off the async workers).
//!
//! A change that does not parse keeps what is trusted now, as kube's dynamic CA controllers do;
//! so does the ConfigMap disappearing or losing a key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio_util::sync::CancellationToken;

use super::trust::{CaBundle, RequestHeaderSettings, RequestHeaderTrust, TrustError, TrustStore};
use crate::file_watch::{self, Contents, FilePoller};
use crate::telemetry::Chain;

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
    pub fn settings(&self) -> Result<RequestHeaderSettings, TrustError> {
        RequestHeaderSettings::new(
            self.allowed_names.clone(),
            &self.username_headers,
            &self.group_headers,
            &self.uid_headers,
            &self.extra_prefixes,
        )
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
    pub request_header: Result<Option<RequestHeaderTrust>, KeyError>,
    /// From `client-ca-file`.
    pub client_ca: Result<Option<CaBundle>, KeyError>,
}

/// A key of the ConfigMap that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A CA key that holds no usable CA bundle.
    #[error("{key}")]
    Ca {
        /// The key.
        key: &'static str,
        /// What is wrong with the bundle.
        #[source]
        source: TrustError,
    },
    /// A list key that is not a JSON list of strings.
    #[error("{key}: not a JSON list of strings")]
    List {
        /// The key.
        key: &'static str,
        /// Where the JSON breaks.
        #[source]
        source: serde_json::Error,
    },
    /// Header names that are not HTTP header names.
    #[error("requestheader headers")]
    Headers(#[source] TrustError),
}

/// Why the ConfigMap could not be used at start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigMapError {
    /// Listing or watching it failed.
    #[error("cannot read ConfigMap {NAMESPACE}/{NAME}")]
    Read(#[source] watcher::Error),
    /// The watch ended before the first list did.
    #[error("cannot read ConfigMap {NAMESPACE}/{NAME}: the watch ended")]
    Ended,
    /// It does not exist.
    #[error("cannot read ConfigMap {NAMESPACE}/{NAME}: it does not exist")]
    Missing,
    /// A key it has is broken.
    #[error("ConfigMap {NAMESPACE}/{NAME}")]
    Key(#[source] KeyError),
}

/// Read the ConfigMap's data as kube-apiserver writes it (lists as JSON arrays).
pub fn parse_configmap(data: &BTreeMap<String, String>, defaults: &HeaderFlags) -> ConfigMapTrust {
    let client_ca = match data.get(CLIENT_CA_KEY).filter(|pem| !pem.trim().is_empty()) {
        None => Ok(None),
        Some(pem) => CaBundle::from_pem(pem.as_bytes())
            .map(Some)
            .map_err(|source| KeyError::Ca {
                key: CLIENT_CA_KEY,
                source,
            }),
    };
    let request_header = match data
        .get(REQUESTHEADER_CA_KEY)
        .filter(|pem| !pem.trim().is_empty())
    {
        None => Ok(None),
        Some(pem) => (|| {
            let ca = CaBundle::from_pem(pem.as_bytes()).map_err(|source| KeyError::Ca {
                key: REQUESTHEADER_CA_KEY,
                source,
            })?;
            let list = |key: &'static str, default: &[String]| -> Result<Vec<String>, KeyError> {
                match data.get(key) {
                    None => Ok(default.to_vec()),
                    Some(text) if text.trim().is_empty() => Ok(Vec::new()),
                    Some(text) => serde_json::from_str::<Vec<String>>(text)
                        .map_err(|source| KeyError::List { key, source }),
                }
            };
            let settings = RequestHeaderSettings::new(
                list(ALLOWED_NAMES_KEY, &defaults.allowed_names)?,
                &list(USERNAME_HEADERS_KEY, &defaults.username_headers)?,
                &list(GROUP_HEADERS_KEY, &defaults.group_headers)?,
                &list(UID_HEADERS_KEY, &defaults.uid_headers)?,
                &list(EXTRA_PREFIXES_KEY, &defaults.extra_prefixes)?,
            )
            .map_err(KeyError::Headers)?;
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
) -> Result<(), ConfigMapError> {
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
            Err(err) if initial => return Err(ConfigMapError::Key(err)),
            Err(err) => {
                tracing::warn!(source = %what, error = %Chain(&err), "keeping the front-proxy CA in use")
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
            Err(err) if initial => return Err(ConfigMapError::Key(err)),
            Err(err) => {
                tracing::warn!(source = %what, error = %Chain(&err), "keeping the client CA in use")
            }
        }
    }
    Ok(())
}

/// The ConfigMap's events: a kube-runtime watcher on `kube-system` with a field selector on
/// the name, with kube's default back-off between failed attempts.
type ConfigMapEvents = BoxStream<'static, Result<Event<ConfigMap>, watcher::Error>>;

/// Follows the authentication ConfigMap once it has been read at start; see [`ConfigMapWatch::run`].
pub struct ConfigMapWatch {
    events: ConfigMapEvents,
    store: Arc<TrustStore>,
    wanted: FromCluster,
    defaults: HeaderFlags,
}

impl std::fmt::Debug for ConfigMapWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigMapWatch")
            .field("wanted", &self.wanted)
            .finish_non_exhaustive()
    }
}

/// Start watching the ConfigMap and apply its first complete list to `store`. An error (the
/// list refused or failing, the ConfigMap missing, a broken key) stops the start, as a
/// misconfigured aggregated API server should not serve.
pub async fn watch_configmap(
    api: Api<ConfigMap>,
    store: Arc<TrustStore>,
    wanted: FromCluster,
    defaults: HeaderFlags,
) -> Result<ConfigMapWatch, ConfigMapError> {
    let config = watcher::Config::default().fields(&format!("metadata.name={NAME}"));
    let mut events: ConfigMapEvents = watcher::watcher(api, config).default_backoff().boxed();
    let mut listed = None;
    loop {
        match events.next().await {
            Some(Ok(Event::Init)) => listed = None,
            Some(Ok(Event::InitApply(configmap))) => listed = Some(configmap),
            Some(Ok(Event::InitDone)) => break,
            // Only after the first list, which ends with InitDone.
            Some(Ok(Event::Apply(_) | Event::Delete(_))) => {}
            Some(Err(err)) => return Err(ConfigMapError::Read(err)),
            None => return Err(ConfigMapError::Ended),
        }
    }
    let Some(configmap) = listed else {
        return Err(ConfigMapError::Missing);
    };
    let data = configmap.data.unwrap_or_default();
    apply(&store, parse_configmap(&data, &defaults), wanted, true)?;
    Ok(ConfigMapWatch {
        events,
        store,
        wanted,
        defaults,
    })
}

impl ConfigMapWatch {
    /// Apply every change until `stop`. The watcher resumes from the last version it saw
    /// (bookmarks included) and lists again when that is too old (410 Gone); errors are logged
    /// and retried with back-off. Returns early only if the watcher ends, which it does not.
    pub async fn run(mut self, stop: CancellationToken) {
        // What a relist found so far; applied when it completes, so a relist that misses the
        // ConfigMap reads as a deletion, not as several changes.
        let mut relisted: Option<Option<ConfigMap>> = None;
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return,
                event = self.events.next() => event,
            };
            match event {
                None => return,
                Some(Ok(Event::Init)) => relisted = Some(None),
                Some(Ok(Event::InitApply(configmap))) => relisted = Some(Some(configmap)),
                Some(Ok(Event::InitDone)) => match relisted.take().flatten() {
                    Some(configmap) => self.apply(configmap),
                    None => tracing::warn!(
                        "ConfigMap {NAMESPACE}/{NAME} is gone; keeping the CAs in use"
                    ),
                },
                Some(Ok(Event::Apply(configmap))) => self.apply(configmap),
                Some(Ok(Event::Delete(_))) => tracing::warn!(
                    "ConfigMap {NAMESPACE}/{NAME} was deleted; keeping the CAs in use"
                ),
                Some(Err(err)) => tracing::warn!(
                    error = %err,
                    "watching ConfigMap {NAMESPACE}/{NAME} failed; keeping the CAs in use and retrying"
                ),
            }
        }
    }

    fn apply(&self, configmap: ConfigMap) {
        let data = configmap.data.unwrap_or_default();
        // After the start, a broken change is logged by `apply` and the CAs in use stay.
        let _ = apply(
            &self.store,
            parse_configmap(&data, &self.defaults),
            self.wanted,
            false,
        );
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

/// A CA file that does not hold a usable CA bundle.
#[derive(Debug, thiserror::Error)]
#[error("{}", path.display())]
pub struct CaFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with its content.
    #[source]
    pub source: super::trust::TrustError,
}

/// Trust `pem` (read from `path`) as `role`.
fn install(
    store: &TrustStore,
    path: &Path,
    pem: &[u8],
    role: &FileRole,
) -> Result<(), CaFileError> {
    let ca = CaBundle::from_pem(pem).map_err(|source| CaFileError {
        path: path.to_path_buf(),
        source,
    })?;
    match role {
        FileRole::RequestHeader(settings) => {
            store.set_request_header(Some(Arc::new(RequestHeaderTrust {
                ca,
                settings: settings.clone(),
            })))
        }
        FileRole::ClientCa => store.set_client_ca(Some(Arc::new(ca))),
    }
    Ok(())
}

/// Load a CA file into `store` as `role` (read on the blocking pool, so a slow volume never
/// stalls requests); returns the bytes read, for [`watch_file`] to notice changes.
pub async fn load_file(
    store: &TrustStore,
    path: &Path,
    role: &FileRole,
) -> Result<Vec<u8>, String> {
    let contents = file_watch::read(&[path.to_path_buf()])
        .await
        .map_err(|err| chain(&err))?;
    let pem = contents.file(0).to_vec();
    install(store, path, &pem, role).map_err(|err| chain(&err))?;
    Ok(pem)
}

/// An error and its causes, each once.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}

/// Re-read a CA file every `interval` until `stop`, swapping it in when its bytes differ from
/// `in_use` (what [`load_file`] returned) and parse (see [`crate::file_watch`]). The bytes
/// compared are the bytes trusted: no second read that could differ.
pub async fn watch_file(
    store: Arc<TrustStore>,
    path: PathBuf,
    role: FileRole,
    in_use: Vec<u8>,
    interval: Duration,
    stop: CancellationToken,
) {
    let poller = FilePoller::new(
        vec![path.clone()],
        interval,
        Some(Contents::new(vec![in_use])),
    );
    poller
        .run("CA file", stop.cancelled(), |contents| {
            install(&store, &path, contents.file(0), &role)?;
            tracing::info!(file = %path.display(), "client CA file reloaded");
            Ok::<_, CaFileError>(())
        })
        .await;
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
        assert!(
            matches!(&err, ConfigMapError::Key(KeyError::Ca { key, .. }) if *key == REQUESTHEADER_CA_KEY),
            "{err:?}"
        );
        let text = Chain(&err).to_string();
        assert!(text.contains(REQUESTHEADER_CA_KEY), "{text}");
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
            matches!(&err, KeyError::List { key, .. } if *key == ALLOWED_NAMES_KEY),
            "{err:?}"
        );
        assert!(
            Chain(&err)
                .to_string()
                .contains("requestheader-allowed-names: not a JSON list"),
            "{err}"
        );
    }
}
