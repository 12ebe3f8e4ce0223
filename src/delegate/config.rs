//! Delegate configuration: the flags for the common single-delegate case, a small YAML file for
//! several, and the validated form the rest of the module uses.
//!
//! Kept here rather than in `config.rs` so the feature stays in its own module; `config.rs`
//! flattens [`DelegateFlags`] into `serve` and calls [`DelegateFlags::problems`] from its one
//! `validate()`, so every problem is still reported at once, before any socket opens.
//!
//! Every number and duration is range-checked where it is parsed, and every problem names the
//! flag or the file (and the delegate) it comes from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::Uri;
use clap::{ArgAction, Args};
use regex::Regex;
use serde::{Deserialize, Deserializer};

/// Where the kubelet mounts the pod's ServiceAccount token (a projected token it rotates).
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// At most this many delegates: each has its own connection pool and discovery task, and a
/// cluster has few external-metrics providers.
pub const MAX_DELEGATES: usize = 16;
/// Timeout bounds. The upper one stays under the aggregator's own request timeout, so the HPA
/// gets our `503` naming the delegate rather than a generic gateway timeout.
pub const TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(30));
/// Discovery refresh bounds: often enough to notice new ScaledObjects, rarely enough to be
/// nothing for the delegate.
pub const DISCOVERY_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(3600));
/// Concurrency bounds per delegate.
pub const CONCURRENCY_RANGE: (u32, u32) = (1, 10_000);
/// Answer size bounds per delegate (a value list for one HPA is a few hundred bytes).
pub const RESPONSE_BYTES_RANGE: (u64, u64) = (1024, 64 * 1024 * 1024);
/// Longest name pattern accepted, and the compiled size it may take.
const MAX_PATTERN_LEN: usize = 1024;
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// `serve` flags for delegates. `--delegate-url` and its companions describe one delegate;
/// `--delegates-config` names a file with several. The timeout, concurrency, size and discovery
/// flags are the defaults for every delegate (a file entry may set its own).
#[derive(Debug, Clone, Default, Args)]
pub struct DelegateFlags {
    /// Forward value requests for metrics this adapter does not define to this external-metrics
    /// server (`https://SERVICE.NAMESPACE.svc:PORT`), e.g. KEDA's metrics server that held the
    /// APIService before.
    #[arg(long, env = "DELEGATE_URL")]
    pub delegate_url: Option<String>,
    /// The delegate's name in messages and metric labels (default: the URL's host).
    #[arg(long, env = "DELEGATE_NAME")]
    pub delegate_name: Option<String>,
    /// CA bundle (PEM) the delegate's serving certificate must chain to; re-read every
    /// --tls-reload-interval.
    #[arg(long, env = "DELEGATE_CA_FILE")]
    pub delegate_ca_file: Option<PathBuf>,
    /// Read the delegate's CA from this Secret (`NAMESPACE/NAME`) through the Kubernetes API,
    /// and follow its changes (KEDA keeps and rotates its CA in `keda/kedaorg-certs`; a pod cannot
    /// mount a Secret from another namespace).
    #[arg(long, env = "DELEGATE_CA_SECRET")]
    pub delegate_ca_secret: Option<String>,
    /// The key of --delegate-ca-secret holding the PEM CA (default `ca.crt`).
    #[arg(long, env = "DELEGATE_CA_SECRET_KEY")]
    pub delegate_ca_secret_key: Option<String>,
    /// Do not verify the delegate's certificate. Anyone who can answer on its address then gets
    /// this adapter's token and can feed HPAs any number: only when the delegate has no CA to
    /// verify against (logged as a warning).
    #[arg(long, env = "DELEGATE_INSECURE_SKIP_TLS_VERIFY", action = ArgAction::Set, num_args = 0..=1,
          default_value_t = false, default_missing_value = "true")]
    pub delegate_insecure_skip_tls_verify: bool,
    /// Bearer token file presented to the delegate (default: the pod's ServiceAccount token,
    /// unless a client certificate is given); re-read every --tls-reload-interval, as the kubelet
    /// rotates it.
    #[arg(long, env = "DELEGATE_TOKEN_FILE")]
    pub delegate_token_file: Option<PathBuf>,
    /// Client certificate (PEM) presented to the delegate instead of (or with) a token.
    #[arg(long, env = "DELEGATE_CLIENT_CERT_FILE")]
    pub delegate_client_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "DELEGATE_CLIENT_KEY_FILE")]
    pub delegate_client_key_file: Option<PathBuf>,
    /// Forward only metric names matching this regular expression (anchor it: `^s[0-9]+-` for
    /// KEDA).
    #[arg(long, env = "DELEGATE_NAME_PATTERN")]
    pub delegate_name_pattern: Option<String>,
    /// Forward only requests whose label selector selects this key (`scaledobject.keda.sh/name`
    /// for KEDA, which refuses requests without it).
    #[arg(long, env = "DELEGATE_SELECTOR_KEY")]
    pub delegate_selector_key: Option<String>,
    /// YAML file listing several delegates, tried in order (a top-level `delegates:` list).
    #[arg(long, env = "DELEGATES_CONFIG")]
    pub delegates_config: Option<PathBuf>,
    /// How long a delegate gets to answer one request (connect, TLS and answer), 100ms to 30s.
    #[arg(long, env = "DELEGATE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub delegate_timeout: Duration,
    /// Requests in flight to one delegate at most; more get an immediate 503 (1 to 10000).
    #[arg(long, env = "DELEGATE_MAX_CONCURRENT_REQUESTS", default_value_t = 128)]
    pub delegate_max_concurrent_requests: u32,
    /// Largest answer taken from a delegate, in bytes (1024 to 67108864).
    #[arg(long, env = "DELEGATE_MAX_RESPONSE_BYTES", default_value_t = 1024 * 1024)]
    pub delegate_max_response_bytes: u64,
    /// How often each delegate's metric list is fetched for discovery, 1s to 1h.
    #[arg(long, env = "DELEGATE_DISCOVERY_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub delegate_discovery_interval: Duration,
}

/// Where a delegate's CA comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// A PEM file, re-read on an interval.
    File(PathBuf),
    /// A key of a Secret, read through the API and watched.
    Secret {
        /// The Secret's namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The key holding the PEM bundle.
        key: String,
    },
    /// PEM given inline in the delegates file.
    Pem(String),
    /// No verification (explicitly asked for).
    InsecureSkipVerify,
}

/// How this adapter proves who it is to a delegate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    /// A bearer token file.
    pub token_file: Option<PathBuf>,
    /// A client certificate and key.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
}

/// Which requests a delegate takes. No rule at all means every request for a name this
/// adapter does not define.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// The metric name must match this.
    pub name_pattern: Option<Regex>,
    /// The label selector must select this key (with `=`, `==` or `in`).
    pub selector_key: Option<String>,
}

impl Rules {
    /// Whether the rules take every name (and so every request).
    pub fn is_catch_all(&self) -> bool {
        self.name_pattern.is_none() && self.selector_key.is_none()
    }
}

/// One validated delegate.
#[derive(Debug, Clone)]
pub struct DelegateConfig {
    /// Name for messages and metric labels.
    pub name: String,
    /// `https://host[:port]`, without path.
    pub url: Uri,
    /// Where its CA comes from.
    pub ca: CaSource,
    /// How we authenticate to it.
    pub credentials: Credentials,
    /// Which requests it takes.
    pub rules: Rules,
    /// How long one request may take.
    pub timeout: Duration,
    /// Requests in flight at most.
    pub max_concurrent_requests: u32,
    /// Largest answer taken.
    pub max_response_bytes: u64,
    /// How often its metric list is fetched.
    pub discovery_interval: Duration,
}

impl DelegateConfig {
    /// The URL as written in messages: scheme and authority only.
    pub fn url_text(&self) -> String {
        self.url.to_string().trim_end_matches('/').to_string()
    }
}

/// The `--delegates-config` file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DelegatesFile {
    delegates: Vec<DelegateEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DelegateEntry {
    name: String,
    url: String,
    ca: CaEntry,
    #[serde(default)]
    auth: AuthEntry,
    #[serde(default, rename = "match")]
    rules: MatchEntry,
    #[serde(default, deserialize_with = "duration")]
    timeout: Option<Duration>,
    #[serde(default)]
    max_concurrent_requests: Option<u32>,
    #[serde(default)]
    max_response_bytes: Option<u64>,
    #[serde(default, deserialize_with = "duration")]
    discovery_interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CaEntry {
    file: Option<PathBuf>,
    secret: Option<SecretEntry>,
    pem: Option<String>,
    /// Spelled as Kubernetes spells it (`APIService.spec.insecureSkipTLSVerify`).
    #[serde(default, rename = "insecureSkipTLSVerify")]
    insecure_skip_tls_verify: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SecretEntry {
    namespace: String,
    name: String,
    #[serde(default = "default_ca_key")]
    key: String,
}

fn default_ca_key() -> String {
    "ca.crt".to_string()
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AuthEntry {
    token_file: Option<PathBuf>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MatchEntry {
    name_pattern: Option<String>,
    selector_key: Option<String>,
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text)
        .map(Some)
        .map_err(|err| serde::de::Error::custom(format!("invalid duration {text:?}: {err}")))
}

/// The defaults the flags give every delegate.
struct Defaults {
    timeout: Duration,
    max_concurrent_requests: u32,
    max_response_bytes: u64,
    discovery_interval: Duration,
}

impl DelegateFlags {
    /// Whether any delegate is configured.
    pub fn any(&self) -> bool {
        self.delegate_url.is_some() || self.delegates_config.is_some()
    }

    /// Every problem, each naming its flag or file (added to `serve`'s one validation).
    pub fn problems(&self, problems: &mut Vec<String>) {
        if let Err(mut found) = self.resolve() {
            problems.append(&mut found);
        }
    }

    /// The validated delegates, in order (empty when none is configured).
    pub fn resolve(&self) -> Result<Vec<DelegateConfig>, Vec<String>> {
        let mut problems = Vec::new();
        let defaults = self.defaults(&mut problems);
        let single_flags: [(&str, bool); 10] = [
            ("--delegate-name", self.delegate_name.is_some()),
            ("--delegate-ca-file", self.delegate_ca_file.is_some()),
            ("--delegate-ca-secret", self.delegate_ca_secret.is_some()),
            (
                "--delegate-ca-secret-key",
                self.delegate_ca_secret_key.is_some(),
            ),
            (
                "--delegate-insecure-skip-tls-verify",
                self.delegate_insecure_skip_tls_verify,
            ),
            ("--delegate-token-file", self.delegate_token_file.is_some()),
            (
                "--delegate-client-cert-file",
                self.delegate_client_cert_file.is_some(),
            ),
            (
                "--delegate-client-key-file",
                self.delegate_client_key_file.is_some(),
            ),
            (
                "--delegate-name-pattern",
                self.delegate_name_pattern.is_some(),
            ),
            (
                "--delegate-selector-key",
                self.delegate_selector_key.is_some(),
            ),
        ];
        let delegates = match (&self.delegate_url, &self.delegates_config) {
            (Some(_), Some(_)) => {
                problems.push(
                    "--delegate-url and --delegates-config are both set (give one delegate with the --delegate-* flags, or several in the file)".to_string(),
                );
                Vec::new()
            }
            (None, None) => {
                for (flag, set) in single_flags {
                    if set {
                        problems.push(format!("{flag} is set but --delegate-url is not"));
                    }
                }
                Vec::new()
            }
            (None, Some(path)) => {
                for (flag, set) in single_flags {
                    if set {
                        problems.push(format!(
                            "{flag} is set with --delegates-config (set it in the file's entry instead)"
                        ));
                    }
                }
                self.several_from_file(path, &defaults, &mut problems)
            }
            (Some(url), None) => self
                .one_from_flags(url, &defaults, &mut problems)
                .into_iter()
                .collect(),
        };
        check_order(&delegates, &mut problems);
        if problems.is_empty() {
            Ok(delegates)
        } else {
            Err(problems)
        }
    }

    fn defaults(&self, problems: &mut Vec<String>) -> Defaults {
        check_duration(
            "--delegate-timeout",
            self.delegate_timeout,
            TIMEOUT_RANGE,
            problems,
        );
        check_duration(
            "--delegate-discovery-interval",
            self.delegate_discovery_interval,
            DISCOVERY_RANGE,
            problems,
        );
        check_number(
            "--delegate-max-concurrent-requests",
            u64::from(self.delegate_max_concurrent_requests),
            (
                u64::from(CONCURRENCY_RANGE.0),
                u64::from(CONCURRENCY_RANGE.1),
            ),
            problems,
        );
        check_number(
            "--delegate-max-response-bytes",
            self.delegate_max_response_bytes,
            RESPONSE_BYTES_RANGE,
            problems,
        );
        Defaults {
            timeout: self.delegate_timeout,
            max_concurrent_requests: self.delegate_max_concurrent_requests,
            max_response_bytes: self.delegate_max_response_bytes,
            discovery_interval: self.delegate_discovery_interval,
        }
    }

    fn one_from_flags(
        &self,
        url: &str,
        defaults: &Defaults,
        problems: &mut Vec<String>,
    ) -> Option<DelegateConfig> {
        let before = problems.len();
        let url = check_url("--delegate-url", url, problems);
        let name = match (&self.delegate_name, &url) {
            (Some(name), _) => name.clone(),
            (None, Some(url)) => url.host().unwrap_or_default().to_string(),
            (None, None) => String::new(),
        };
        if url.is_some() {
            check_name("--delegate-name", &name, problems);
        }
        let secret = self.delegate_ca_secret.as_ref().and_then(|text| {
            let parsed = text
                .split_once('/')
                .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'));
            if parsed.is_none() {
                problems.push(format!(
                    "--delegate-ca-secret: {text:?} is not NAMESPACE/NAME (e.g. keda/kedaorg-certs)"
                ));
            }
            parsed.map(|(ns, name)| (ns.to_string(), name.to_string()))
        });
        let ca = ca_source(
            "--delegate-ca-file, --delegate-ca-secret or --delegate-insecure-skip-tls-verify",
            self.delegate_ca_file.clone(),
            secret.map(|(namespace, name)| SecretEntry {
                namespace,
                name,
                key: self
                    .delegate_ca_secret_key
                    .clone()
                    .unwrap_or_else(default_ca_key),
            }),
            None,
            self.delegate_insecure_skip_tls_verify,
            "--delegate",
            problems,
        );
        let credentials = credentials(
            "--delegate-token-file",
            "--delegate-client-cert-file",
            self.delegate_token_file.clone(),
            self.delegate_client_cert_file.clone(),
            self.delegate_client_key_file.clone(),
            problems,
        );
        let rules = rules(
            "--delegate-name-pattern",
            "--delegate-selector-key",
            self.delegate_name_pattern.as_deref(),
            self.delegate_selector_key.as_deref(),
            problems,
        );
        if problems.len() != before {
            return None;
        }
        Some(DelegateConfig {
            name,
            url: url?,
            ca: ca?,
            credentials,
            rules,
            timeout: defaults.timeout,
            max_concurrent_requests: defaults.max_concurrent_requests,
            max_response_bytes: defaults.max_response_bytes,
            discovery_interval: defaults.discovery_interval,
        })
    }

    fn several_from_file(
        &self,
        path: &Path,
        defaults: &Defaults,
        problems: &mut Vec<String>,
    ) -> Vec<DelegateConfig> {
        let file = path.display();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) => {
                problems.push(format!("--delegates-config: cannot read {file}: {err}"));
                return Vec::new();
            }
        };
        let parsed: DelegatesFile = match serde_saphyr::from_str(&text) {
            Ok(parsed) => parsed,
            Err(err) => {
                problems.push(format!("--delegates-config {file}: {err}"));
                return Vec::new();
            }
        };
        if parsed.delegates.is_empty() || parsed.delegates.len() > MAX_DELEGATES {
            problems.push(format!(
                "--delegates-config {file}: list 1 to {MAX_DELEGATES} delegates (found {})",
                parsed.delegates.len()
            ));
        }
        let mut delegates = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (index, entry) in parsed.delegates.into_iter().enumerate() {
            let before = problems.len();
            let at = format!("--delegates-config {file}: delegates[{index}]");
            let mut found = Vec::new();
            check_name(&format!("{at}.name"), &entry.name, &mut found);
            let at = if entry.name.is_empty() {
                at
            } else {
                format!("{at} ({})", entry.name)
            };
            let url = check_url(&format!("{at}.url"), &entry.url, &mut found);
            let ca = ca_source(
                &format!("{at}.ca (file, secret, pem or insecureSkipTLSVerify)"),
                entry.ca.file,
                entry.ca.secret,
                entry.ca.pem,
                entry.ca.insecure_skip_tls_verify,
                &format!("{at}.ca"),
                &mut found,
            );
            let credentials = credentials(
                &format!("{at}.auth.tokenFile"),
                &format!("{at}.auth.clientCertFile"),
                entry.auth.token_file,
                entry.auth.client_cert_file,
                entry.auth.client_key_file,
                &mut found,
            );
            let rules = rules(
                &format!("{at}.match.namePattern"),
                &format!("{at}.match.selectorKey"),
                entry.rules.name_pattern.as_deref(),
                entry.rules.selector_key.as_deref(),
                &mut found,
            );
            // An entry's own values are checked here; the flags' defaults were checked once.
            if let Some(timeout) = entry.timeout {
                check_duration(&format!("{at}.timeout"), timeout, TIMEOUT_RANGE, &mut found);
            }
            if let Some(interval) = entry.discovery_interval {
                check_duration(
                    &format!("{at}.discoveryInterval"),
                    interval,
                    DISCOVERY_RANGE,
                    &mut found,
                );
            }
            if let Some(concurrency) = entry.max_concurrent_requests {
                check_number(
                    &format!("{at}.maxConcurrentRequests"),
                    u64::from(concurrency),
                    (
                        u64::from(CONCURRENCY_RANGE.0),
                        u64::from(CONCURRENCY_RANGE.1),
                    ),
                    &mut found,
                );
            }
            if let Some(bytes) = entry.max_response_bytes {
                check_number(
                    &format!("{at}.maxResponseBytes"),
                    bytes,
                    RESPONSE_BYTES_RANGE,
                    &mut found,
                );
            }
            let timeout = entry.timeout.unwrap_or(defaults.timeout);
            let discovery_interval = entry
                .discovery_interval
                .unwrap_or(defaults.discovery_interval);
            let max_concurrent_requests = entry
                .max_concurrent_requests
                .unwrap_or(defaults.max_concurrent_requests);
            let max_response_bytes = entry
                .max_response_bytes
                .unwrap_or(defaults.max_response_bytes);
            if !names.insert(entry.name.clone()) {
                found.push(format!("{at}.name: {:?} is used twice", entry.name));
            }
            problems.append(&mut found);
            if problems.len() != before {
                continue;
            }
            if let (Some(url), Some(ca)) = (url, ca) {
                delegates.push(DelegateConfig {
                    name: entry.name,
                    url,
                    ca,
                    credentials,
                    rules,
                    timeout,
                    max_concurrent_requests,
                    max_response_bytes,
                    discovery_interval,
                });
            }
        }
        delegates
    }
}

/// A delegate without rules takes every name: one listed before others would starve them.
fn check_order(delegates: &[DelegateConfig], problems: &mut Vec<String>) {
    if let Some(position) = delegates.iter().position(|d| d.rules.is_catch_all())
        && position + 1 < delegates.len()
    {
        problems.push(format!(
            "delegate {:?} has no match rules, so it takes every request and the delegates after it would never be asked: give it a namePattern or selectorKey, or list it last",
            delegates[position].name
        ));
    }
}

fn check_duration(
    what: &str,
    value: Duration,
    range: (Duration, Duration),
    problems: &mut Vec<String>,
) {
    if value < range.0 || value > range.1 {
        problems.push(format!(
            "{what}: {} is out of range ({} to {})",
            humantime::format_duration(value),
            humantime::format_duration(range.0),
            humantime::format_duration(range.1)
        ));
    }
}

fn check_number(what: &str, value: u64, range: (u64, u64), problems: &mut Vec<String>) {
    if value < range.0 || value > range.1 {
        problems.push(format!(
            "{what}: {value} is out of range ({} to {})",
            range.0, range.1
        ));
    }
}

/// A name usable in messages and as a Prometheus label value: a DNS label or subdomain.
fn check_name(what: &str, name: &str, problems: &mut Vec<String>) {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        problems.push(format!(
            "{what}: {name:?} is not a name of 1 to 63 lowercase letters, digits, '-' and '.'"
        ));
    }
}

/// `https://host[:port]`: TLS only (our token travels with every request), no user information
/// (it would end up in messages), no path or query (the request's own path is appended).
fn check_url(what: &str, text: &str, problems: &mut Vec<String>) -> Option<Uri> {
    let uri: Uri = match text.parse() {
        Ok(uri) => uri,
        Err(err) => {
            problems.push(format!("{what}: {text:?} is not a URL: {err}"));
            return None;
        }
    };
    let mut wrong = Vec::new();
    if uri.scheme_str() != Some("https") {
        wrong.push("it must start with https:// (this adapter's token is sent with every request)");
    }
    match uri.authority() {
        None => wrong.push("it has no host"),
        Some(authority) if authority.as_str().contains('@') => {
            wrong.push("it must not carry user information")
        }
        Some(authority) if authority.host().is_empty() => wrong.push("it has no host"),
        Some(_) => {}
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        wrong.push("it must have no path or query (the request's own path is used)");
    }
    if wrong.is_empty() {
        // Normalise to scheme://authority/ so paths can be appended.
        Uri::builder()
            .scheme("https")
            .authority(uri.authority()?.clone())
            .path_and_query("/")
            .build()
            .ok()
    } else {
        problems.push(format!("{what}: {text:?}: {}", wrong.join("; ")));
        None
    }
}

#[allow(clippy::too_many_arguments, reason = "one call per configuration form")]
fn ca_source(
    what: &str,
    file: Option<PathBuf>,
    secret: Option<SecretEntry>,
    pem: Option<String>,
    insecure: bool,
    at: &str,
    problems: &mut Vec<String>,
) -> Option<CaSource> {
    let given = usize::from(file.is_some())
        + usize::from(secret.is_some())
        + usize::from(pem.is_some())
        + usize::from(insecure);
    if given != 1 {
        problems.push(format!(
            "{what}: give exactly one way to verify the delegate's certificate (found {given})"
        ));
        return None;
    }
    if let Some(file) = file {
        if !file.is_file() {
            problems.push(format!("{at}: {} is not a readable file", file.display()));
            return None;
        }
        return Some(CaSource::File(file));
    }
    if let Some(secret) = secret {
        let mut bad = Vec::new();
        check_name(
            &format!("{at} secret namespace"),
            &secret.namespace,
            &mut bad,
        );
        let name_ok = !secret.name.is_empty()
            && secret.name.len() <= 253
            && secret
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !name_ok {
            bad.push(format!(
                "{at} secret name: {:?} is not a Secret name",
                secret.name
            ));
        }
        let key_ok = !secret.key.is_empty()
            && secret.key.len() <= 253
            && secret
                .key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
        if !key_ok {
            bad.push(format!(
                "{at} secret key: {:?} is not a Secret key",
                secret.key
            ));
        }
        if !bad.is_empty() {
            problems.append(&mut bad);
            return None;
        }
        return Some(CaSource::Secret {
            namespace: secret.namespace,
            name: secret.name,
            key: secret.key,
        });
    }
    if let Some(pem) = pem {
        if let Err(err) = super::tls::CaRoots::from_pem(pem.as_bytes()) {
            problems.push(format!("{at}.pem: {}", crate::telemetry::Chain(&err)));
            return None;
        }
        return Some(CaSource::Pem(pem));
    }
    Some(CaSource::InsecureSkipVerify)
}

fn credentials(
    token_what: &str,
    cert_what: &str,
    token_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    problems: &mut Vec<String>,
) -> Credentials {
    let client_certificate = match (cert_file, key_file) {
        (Some(cert), Some(key)) => {
            for path in [&cert, &key] {
                if !path.is_file() {
                    problems.push(format!(
                        "{cert_what}: {} is not a readable file",
                        path.display()
                    ));
                }
            }
            Some((cert, key))
        }
        (None, None) => None,
        _ => {
            problems.push(format!(
                "{cert_what}: a client certificate needs both its certificate and its key file"
            ));
            None
        }
    };
    // The pod's own ServiceAccount token unless told otherwise: it is what KEDA and the others
    // check with a TokenReview. With a client certificate and no token file, only the certificate.
    let token_file = match token_file {
        Some(path) => Some(path),
        None if client_certificate.is_some() => None,
        None => Some(PathBuf::from(SERVICE_ACCOUNT_TOKEN)),
    };
    if let Some(path) = &token_file
        && !path.is_file()
    {
        problems.push(format!(
            "{token_what}: {} is not a readable file{}",
            path.display(),
            if path == Path::new(SERVICE_ACCOUNT_TOKEN) {
                " (the pod's ServiceAccount token: is automountServiceAccountToken off? Or give a token file or client certificate)"
            } else {
                ""
            }
        ));
    }
    Credentials {
        token_file,
        client_certificate,
    }
}

fn rules(
    pattern_what: &str,
    key_what: &str,
    pattern: Option<&str>,
    key: Option<&str>,
    problems: &mut Vec<String>,
) -> Rules {
    let name_pattern = pattern.and_then(|pattern| {
        if pattern.is_empty() || pattern.len() > MAX_PATTERN_LEN {
            problems.push(format!(
                "{pattern_what}: the pattern must be 1 to {MAX_PATTERN_LEN} characters"
            ));
            return None;
        }
        regex::RegexBuilder::new(pattern)
            .size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map_err(|err| problems.push(format!("{pattern_what}: {pattern:?}: {err}")))
            .ok()
    });
    let selector_key = key.and_then(|key| {
        // A key is valid exactly when `key` alone parses as an existence requirement on it.
        match crate::api::selector::parse(key) {
            Ok(selector)
                if selector.requirements.len() == 1
                    && selector.requirements[0].key == key
                    && selector.requirements[0].operator == crate::provider::Operator::Exists =>
            {
                Some(key.to_string())
            }
            _ => {
                problems.push(format!("{key_what}: {key:?} is not a label key"));
                None
            }
        }
    });
    Rules {
        name_pattern,
        selector_key,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::{Cli, Command};
    use clap::Parser;

    fn flags(args: &[&str]) -> DelegateFlags {
        let mut argv = vec!["cloudwatch-metrics-adapter", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(config) => config.delegate,
            _ => panic!("expected serve"),
        }
    }

    fn problems(flags: &DelegateFlags) -> String {
        flags.resolve().unwrap_err().join("\n")
    }

    fn ca_file(dir: &Path) -> String {
        let path = dir.join("ca.pem");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        std::fs::write(&path, cert.pem()).unwrap();
        path.to_str().unwrap().to_string()
    }

    #[test]
    fn no_delegate_by_default() {
        let flags = flags(&[]);
        assert!(!flags.any());
        assert!(flags.resolve().unwrap().is_empty());
    }

    #[test]
    fn one_delegate_from_flags() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t").unwrap();
        let flags = flags(&[
            "--delegate-url",
            "https://keda-operator-metrics-apiserver.keda.svc:443",
            "--delegate-ca-secret",
            "keda/kedaorg-certs",
            "--delegate-token-file",
            token.to_str().unwrap(),
            "--delegate-name-pattern",
            "^s[0-9]+-",
            "--delegate-selector-key",
            "scaledobject.keda.sh/name",
        ]);
        let delegates = flags.resolve().unwrap();
        assert_eq!(delegates.len(), 1);
        let keda = &delegates[0];
        assert_eq!(keda.name, "keda-operator-metrics-apiserver.keda.svc");
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
        assert_eq!(
            keda.credentials.token_file.as_deref(),
            Some(token.as_path())
        );
        assert!(
            keda.rules
                .name_pattern
                .as_ref()
                .unwrap()
                .is_match("s0-rabbitmq-orders")
        );
        assert_eq!(
            keda.rules.selector_key.as_deref(),
            Some("scaledobject.keda.sh/name")
        );
        assert_eq!(keda.timeout, Duration::from_secs(5));
        assert_eq!(keda.max_concurrent_requests, 128);
        assert_eq!(keda.discovery_interval, Duration::from_secs(30));
    }

    #[test]
    fn every_flag_problem_is_reported_with_its_flag() {
        let text = problems(&flags(&[
            "--delegate-url",
            "http://user:pw@keda:80/path",
            "--delegate-ca-file",
            "/nonexistent/ca.pem",
            "--delegate-insecure-skip-tls-verify",
            "--delegate-client-cert-file",
            "/nonexistent/cert.pem",
            "--delegate-name-pattern",
            "s[0-9",
            "--delegate-selector-key",
            "bad key",
            "--delegate-timeout",
            "1h",
            "--delegate-max-concurrent-requests",
            "0",
            "--delegate-max-response-bytes",
            "10",
            "--delegate-discovery-interval",
            "100ms",
        ]));
        for needle in [
            "--delegate-url: \"http://user:pw@keda:80/path\": it must start with https://",
            "must not carry user information",
            "must have no path or query",
            "give exactly one way to verify the delegate's certificate (found 2)",
            "--delegate-client-cert-file: a client certificate needs both",
            "--delegate-name-pattern: \"s[0-9\"",
            "--delegate-selector-key: \"bad key\" is not a label key",
            "--delegate-timeout: 1h is out of range (100ms to 30s)",
            "--delegate-max-concurrent-requests: 0 is out of range (1 to 10000)",
            "--delegate-max-response-bytes: 10 is out of range (1024 to 67108864)",
            "--delegate-discovery-interval: 100ms is out of range (1s to 1h)",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn companions_need_the_url_and_do_not_mix_with_the_file() {
        let text = problems(&flags(&[
            "--delegate-ca-file",
            "/x",
            "--delegate-insecure-skip-tls-verify",
        ]));
        assert!(
            text.contains("--delegate-ca-file is set but --delegate-url is not"),
            "{text}"
        );
        assert!(
            text.contains("--delegate-insecure-skip-tls-verify is set but --delegate-url is not"),
            "{text}"
        );
        let text = problems(&flags(&[
            "--delegate-url",
            "https://a:443",
            "--delegates-config",
            "/x.yaml",
        ]));
        assert!(text.contains("are both set"), "{text}");
        let text = problems(&flags(&[
            "--delegates-config",
            "/nonexistent/delegates.yaml",
            "--delegate-selector-key",
            "a",
        ]));
        assert!(
            text.contains("--delegate-selector-key is set with --delegates-config"),
            "{text}"
        );
        assert!(
            text.contains("cannot read /nonexistent/delegates.yaml"),
            "{text}"
        );
    }

    #[test]
    fn several_delegates_from_a_file_in_order() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_file(dir.path());
        let token = dir.path().join("token");
        std::fs::write(&token, "t").unwrap();
        let file = dir.path().join("delegates.yaml");
        std::fs::write(
            &file,
            format!(
                r#"
delegates:
  - name: keda
    url: https://keda-operator-metrics-apiserver.keda.svc:443
    ca: {{secret: {{namespace: keda, name: kedaorg-certs}}}}
    auth: {{tokenFile: {token}}}
    match: {{namePattern: "^s[0-9]+-", selectorKey: scaledobject.keda.sh/name}}
    timeout: 2s
  - name: datadog
    url: https://datadog-cluster-agent-metrics-api.datadog.svc:8443
    ca: {{insecureSkipTLSVerify: true}}
    auth: {{tokenFile: {token}}}
    match: {{namePattern: "^datadogmetric@"}}
  - name: prometheus-adapter
    url: https://prometheus-adapter.monitoring.svc
    ca: {{file: {ca}}}
    auth: {{tokenFile: {token}}}
"#,
                token = token.display()
            ),
        )
        .unwrap();
        let delegates = flags(&[
            "--delegates-config",
            file.to_str().unwrap(),
            "--delegate-timeout",
            "3s",
        ])
        .resolve()
        .unwrap();
        let names: Vec<&str> = delegates.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["keda", "datadog", "prometheus-adapter"]);
        assert_eq!(delegates[0].timeout, Duration::from_secs(2));
        // The flag is the default for entries that do not set their own.
        assert_eq!(delegates[1].timeout, Duration::from_secs(3));
        assert_eq!(delegates[1].ca, CaSource::InsecureSkipVerify);
        assert!(delegates[2].rules.is_catch_all());
        assert_eq!(
            delegates[2].url_text(),
            "https://prometheus-adapter.monitoring.svc"
        );
    }

    #[test]
    fn file_problems_name_the_entry_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("delegates.yaml");
        let write = |text: &str| std::fs::write(&file, text).unwrap();
        let check = |needles: &[&str]| {
            let text = problems(&flags(&["--delegates-config", file.to_str().unwrap()]));
            for needle in needles {
                assert!(text.contains(needle), "missing {needle:?} in\n{text}");
            }
        };
        write(
            "delegates:\n  - name: keda\n    url: https://k:443\n    ca: {insecureSkipTLSVerify: true}\n    tiemout: 2s\n",
        );
        check(&["unknown field `tiemout`"]);
        write("delegates: []\n");
        check(&["list 1 to 16 delegates (found 0)"]);
        write(
            "delegates:\n  - name: all\n    url: https://a:443\n    ca: {insecureSkipTLSVerify: true}\n    auth: {tokenFile: /nonexistent/token}\n  - name: all\n    url: https://b\n    ca: {secret: {namespace: Keda, name: x}}\n    timeout: 0s\n    maxResponseBytes: 1000000000\n",
        );
        check(&[
            "delegates[0] (all).auth.tokenFile: /nonexistent/token is not a readable file",
            "delegates[1] (all).name: \"all\" is used twice",
            "delegates[1] (all).ca secret namespace: \"Keda\"",
            "delegates[1] (all).timeout: 0s is out of range",
            "delegates[1] (all).maxResponseBytes: 1000000000 is out of range",
        ]);
        write("delegates:\n  - name: x\n    url: https://a:443\n    ca: {pem: \"not pem\"}\n");
        check(&["delegates[0] (x).ca.pem: no CERTIFICATE block found"]);
    }

    #[test]
    fn a_catch_all_must_come_last() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t").unwrap();
        let file = dir.path().join("delegates.yaml");
        std::fs::write(
            &file,
            format!(
                "delegates:\n  - name: all\n    url: https://a:443\n    ca: {{insecureSkipTLSVerify: true}}\n    auth: {{tokenFile: {t}}}\n  - name: keda\n    url: https://b:443\n    ca: {{insecureSkipTLSVerify: true}}\n    auth: {{tokenFile: {t}}}\n    match: {{namePattern: '^s'}}\n",
                t = token.display()
            ),
        )
        .unwrap();
        let text = problems(&flags(&["--delegates-config", file.to_str().unwrap()]));
        assert!(
            text.contains("delegate \"all\" has no match rules"),
            "{text}"
        );
    }
}
