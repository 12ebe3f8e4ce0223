//! Command line and environment: every flag has a `long` name and an environment variable.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

/// Kubernetes external metrics API server backed by AWS CloudWatch.
#[derive(Debug, Parser)]
#[command(name = "cloudwatch-metrics-adapter", version, about)]
pub struct Cli {
    /// Log output format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at start; boxing would only add noise"
)]
pub enum Command {
    /// Serve external.metrics.k8s.io over HTTPS.
    Serve(ServeConfig),
    /// Print the GetMetricData request a definition builds, and the JSON the server would serve.
    Query(QueryConfig),
    /// Print the ExternalMetric CustomResourceDefinition (YAML) generated from the Rust types.
    Crd,
}

/// AWS settings shared by `serve` and `query`.
#[derive(Debug, Clone, Args)]
pub struct AwsConfig {
    /// AWS region (else AWS_REGION, then AWS_DEFAULT_REGION; instance metadata is never used).
    #[arg(long, env = "AWS_REGION")]
    pub aws_region: Option<String>,
    /// CloudWatch endpoint override, e.g. a local emulator. The SDK's AWS_ENDPOINT_URL also works.
    #[arg(long, env = "AWS_ENDPOINT_URL_CLOUDWATCH")]
    pub cloudwatch_endpoint_url: Option<String>,
    /// SQS endpoint override, e.g. a local SQS. The SDK's AWS_ENDPOINT_URL also works.
    #[arg(long, env = "AWS_ENDPOINT_URL_SQS")]
    pub sqs_endpoint_url: Option<String>,
    /// Timeout for one AWS call attempt (GetMetricData, GetQueueAttributes).
    #[arg(long, env = "CLOUDWATCH_TIMEOUT", default_value = "5s", value_parser = duration_in(MILLISECOND * 100, MINUTE * 5))]
    pub cloudwatch_timeout: Duration,
}

impl AwsConfig {
    /// The region to use: the flag or AWS_REGION, else AWS_DEFAULT_REGION.
    pub fn region(&self) -> Option<String> {
        self.aws_region
            .clone()
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .filter(|r| !r.is_empty())
    }

    fn problems(&self, problems: &mut Vec<String>) {
        match self.region() {
            None => problems.push(
                "--aws-region: no region given (set --aws-region, AWS_REGION or AWS_DEFAULT_REGION; instance metadata is not used because Fargate has none)".to_string(),
            ),
            Some(region)
                if !region
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') =>
            {
                problems.push(format!("--aws-region: {region:?} is not a region name such as us-east-1"))
            }
            Some(_) => {}
        }
        for (flag, url) in [
            ("--cloudwatch-endpoint-url", &self.cloudwatch_endpoint_url),
            ("--sqs-endpoint-url", &self.sqs_endpoint_url),
        ] {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                problems.push(format!(
                    "{flag}: {url:?} must start with http:// or https://"
                ));
            }
        }
    }
}

/// `serve` flags.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// YAML file of metric definitions (a top-level `metrics:` list).
    #[arg(long = "config", env = "ADAPTER_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTPS port for the external metrics API.
    #[arg(long, env = "SECURE_PORT", default_value_t = 6443)]
    pub secure_port: u16,
    /// Address the HTTPS port binds to.
    #[arg(long, env = "BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,
    /// Serving certificate (PEM). With --tls-private-key-file; both absent means self-signed.
    #[arg(long, env = "TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// Serving private key (PEM).
    #[arg(long, env = "TLS_PRIVATE_KEY_FILE")]
    pub tls_private_key_file: Option<PathBuf>,
    /// How often certificate files are re-read for rotation.
    #[arg(long, env = "TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = duration_in(MILLISECOND * 100, DAY))]
    pub tls_reload_interval: Duration,
    /// Extra DNS names for the self-signed certificate (the Service's names), comma-separated.
    #[arg(long, env = "SELF_SIGNED_NAMES", value_delimiter = ',')]
    pub self_signed_names: Vec<String>,
    /// Plain-HTTP port for /healthz, /livez, /readyz and /metrics.
    #[arg(long, env = "ADMIN_PORT", default_value_t = 8080)]
    pub admin_port: u16,
    /// Address the admin port binds to.
    #[arg(long, env = "ADMIN_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub admin_bind_address: IpAddr,
    /// After SIGTERM, how long to keep serving while reporting not-ready (endpoint propagation).
    #[arg(long, env = "SHUTDOWN_DELAY", default_value = "0s", value_parser = duration_in(Duration::ZERO, MINUTE * 10))]
    pub shutdown_delay: Duration,
    /// After that, how long in-flight requests get to finish.
    #[arg(long, env = "SHUTDOWN_GRACE_PERIOD", default_value = "20s", value_parser = duration_in(Duration::ZERO, HOUR))]
    pub shutdown_grace_period: Duration,
    /// Limits on what a client can hold on the API port.
    #[command(flatten)]
    pub edge: EdgeFlags,
    /// Cache settings.
    #[command(flatten)]
    pub cache: CacheFlags,
    /// ExternalMetric objects.
    #[command(flatten)]
    pub crd: CrdFlags,
    /// Authentication and authorization settings (and `--kubeconfig`).
    #[command(flatten)]
    pub auth: AuthFlags,
    /// AWS settings.
    #[command(flatten)]
    pub aws: AwsConfig,
    /// Delegates: the cluster's other external-metrics providers (see `delegate::config`).
    #[command(flatten)]
    pub delegate: crate::delegate::config::DelegateFlags,
    /// Leader election: which replica calls AWS and writes status.
    #[command(flatten)]
    pub leader_election: LeaderElectionFlags,
}

/// `ExternalMetric` objects: the watch, and how their status is written.
#[derive(Debug, Clone, Args)]
pub struct CrdFlags {
    /// Serve ExternalMetric objects from the cluster (needs the CRD and the Kubernetes API, see
    /// `--kubeconfig`). `--watch-external-metrics=false` serves only the definitions file.
    #[arg(long, env = "WATCH_EXTERNAL_METRICS", default_value_t = true, action = ArgAction::Set,
          overrides_with = "watch_external_metrics")]
    pub watch_external_metrics: bool,
    /// At most one status update per ExternalMetric per this interval (newer states coalesce).
    #[arg(long, env = "STATUS_UPDATE_INTERVAL", default_value = "15s", value_parser = duration_in(MILLISECOND * 100, DAY))]
    pub status_update_interval: Duration,
    /// At most this many ExternalMetric status updates and Events per second, overall.
    #[arg(long, env = "STATUS_WRITES_PER_SECOND", default_value_t = 5.0, value_parser = number_in(0.01, 1000.0))]
    pub status_writes_per_second: f64,
    /// IAM roles ExternalMetric objects may name in roleArn (exact ARNs, or prefixes ending in
    /// `*`), comma-separated. Empty: objects may not assume roles (the definitions file may).
    #[arg(long, env = "EXTERNAL_METRIC_ALLOWED_ROLE_ARNS", value_delimiter = ',')]
    pub external_metric_allowed_role_arns: Vec<String>,
}

/// How requests are authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthorizationMode {
    /// Ask the cluster with a SubjectAccessReview (what an aggregated API server does).
    #[value(name = "Delegated")]
    Delegated,
    /// Allow every authenticated request. For local runs only.
    #[value(name = "AlwaysAllow")]
    AlwaysAllow,
}

/// Who may call, and how that is decided. Flag names follow kube-apiserver's.
#[derive(Debug, Clone, Args)]
pub struct AuthFlags {
    /// kubeconfig for TokenReview, SubjectAccessReview and the authentication ConfigMap. Without
    /// it, the pod's service account (in-cluster configuration).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// `Delegated` (SubjectAccessReview per request, cached) or `AlwaysAllow` (local runs).
    #[arg(long, env = "AUTHORIZATION_MODE", value_enum, default_value_t = AuthorizationMode::Delegated)]
    pub authorization_mode: AuthorizationMode,
    /// Treat requests without credentials as `system:anonymous` (then authorized like anyone
    /// else) instead of answering 401.
    #[arg(long, env = "ANONYMOUS_AUTH", action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub anonymous_auth: bool,
    /// Do not read ConfigMap kube-system/extension-apiserver-authentication; use only the CA flags.
    #[arg(long, env = "AUTHENTICATION_SKIP_LOOKUP", action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub authentication_skip_lookup: bool,
    /// CA bundle (PEM) for client certificates: user = CN, groups = O. Overrides the ConfigMap's
    /// `client-ca-file`; re-read every --tls-reload-interval.
    #[arg(long, env = "CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,
    /// CA bundle (PEM) for the front proxy (kube-apiserver's aggregator). With it, all the
    /// requestheader settings come from flags instead of the ConfigMap; re-read every
    /// --tls-reload-interval.
    #[arg(long, env = "REQUESTHEADER_CLIENT_CA_FILE")]
    pub requestheader_client_ca_file: Option<PathBuf>,
    /// Common names the front proxy's certificate may have (comma-separated); empty means any
    /// certificate signed by the requestheader CA.
    #[arg(long, env = "REQUESTHEADER_ALLOWED_NAMES", value_delimiter = ',')]
    pub requestheader_allowed_names: Vec<String>,
    /// Headers carrying the user name (first non-empty wins).
    #[arg(
        long,
        env = "REQUESTHEADER_USERNAME_HEADERS",
        value_delimiter = ',',
        default_value = "X-Remote-User"
    )]
    pub requestheader_username_headers: Vec<String>,
    /// Headers carrying groups (every line of every header).
    #[arg(
        long,
        env = "REQUESTHEADER_GROUP_HEADERS",
        value_delimiter = ',',
        default_value = "X-Remote-Group"
    )]
    pub requestheader_group_headers: Vec<String>,
    /// Header prefixes carrying extra attributes (`<prefix><percent-encoded key>: value`).
    #[arg(
        long,
        env = "REQUESTHEADER_EXTRA_HEADERS_PREFIX",
        value_delimiter = ',',
        default_value = "X-Remote-Extra-"
    )]
    pub requestheader_extra_headers_prefix: Vec<String>,
    /// Headers carrying the user's UID.
    #[arg(
        long,
        env = "REQUESTHEADER_UID_HEADERS",
        value_delimiter = ',',
        default_value = "X-Remote-Uid"
    )]
    pub requestheader_uid_headers: Vec<String>,
    /// How long a TokenReview answer is reused (authenticated or not).
    #[arg(long, env = "AUTHENTICATION_TOKEN_WEBHOOK_CACHE_TTL", default_value = "10s", value_parser = duration_in(SECOND, DAY))]
    pub authentication_token_webhook_cache_ttl: Duration,
    /// How long an "allowed" SubjectAccessReview answer is reused.
    #[arg(long, env = "AUTHORIZATION_WEBHOOK_CACHE_AUTHORIZED_TTL", default_value = "10s", value_parser = duration_in(SECOND, DAY))]
    pub authorization_webhook_cache_authorized_ttl: Duration,
    /// How long a "denied" SubjectAccessReview answer is reused.
    #[arg(long, env = "AUTHORIZATION_WEBHOOK_CACHE_UNAUTHORIZED_TTL", default_value = "10s", value_parser = duration_in(SECOND, DAY))]
    pub authorization_webhook_cache_unauthorized_ttl: Duration,
}

impl AuthFlags {
    /// Whether the server needs the Kubernetes API (and so a kube client): for SubjectAccessReview,
    /// or to read a CA no flag gives.
    pub fn needs_cluster(&self) -> bool {
        self.authorization_mode == AuthorizationMode::Delegated
            || (!self.authentication_skip_lookup
                && (self.client_ca_file.is_none() || self.requestheader_client_ca_file.is_none()))
    }

    fn problems(&self, problems: &mut Vec<String>) {
        for (flag, path) in [
            ("--kubeconfig", &self.kubeconfig),
            ("--client-ca-file", &self.client_ca_file),
            (
                "--requestheader-client-ca-file",
                &self.requestheader_client_ca_file,
            ),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                problems.push(format!("{flag}: {} is not a readable file", path.display()));
            }
        }
        for (flag, names) in [
            (
                "--requestheader-username-headers",
                &self.requestheader_username_headers,
            ),
            (
                "--requestheader-group-headers",
                &self.requestheader_group_headers,
            ),
            (
                "--requestheader-extra-headers-prefix",
                &self.requestheader_extra_headers_prefix,
            ),
            (
                "--requestheader-uid-headers",
                &self.requestheader_uid_headers,
            ),
        ] {
            for name in names {
                let name = name.trim();
                if name.is_empty() || axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    problems.push(format!("{flag}: {name:?} is not an HTTP header name"));
                }
            }
        }
        if self.requestheader_client_ca_file.is_none()
            && self.authentication_skip_lookup
            && !self.requestheader_allowed_names.is_empty()
        {
            problems.push(
                "--requestheader-allowed-names is set but no front-proxy CA is (give --requestheader-client-ca-file, or drop --authentication-skip-lookup to read it from the cluster)".to_string(),
            );
        }
    }
}

/// The refresh engine's settings.
#[derive(Debug, Clone, Args)]
pub struct CacheFlags {
    /// Serve the last good value this long (since it was fetched) while refreshes fail; then
    /// answer with an error. At least three refresh intervals; a definition's maxAge overrides.
    #[arg(long, env = "MAX_VALUE_AGE", default_value = "5m", value_parser = duration_in(SECOND, DAY * 7))]
    pub max_value_age: Duration,
    /// Stop refreshing a series nobody has asked for in this long.
    #[arg(long, env = "SERIES_IDLE_TIMEOUT", default_value = "10m", value_parser = duration_in(SECOND, DAY * 7))]
    pub series_idle_timeout: Duration,
    /// Never make more GetMetricData calls per second than this (the account's quota is 50,
    /// shared with everything else in the account and region).
    #[arg(long, env = "CLOUDWATCH_CALLS_PER_SECOND", default_value_t = 10.0, value_parser = number_in(0.01, 50.0))]
    pub cloudwatch_calls_per_second: f64,
    /// Never make more SQS GetQueueAttributes calls per second than this (one call reads one
    /// queue; 1,000 queues refreshed every 15 s need about 67 calls per second).
    #[arg(long, env = "SQS_CALLS_PER_SECOND", default_value_t = DEFAULT_SQS_CALLS_PER_SECOND, value_parser = number_in(0.01, MAX_SQS_CALLS_PER_SECOND))]
    pub sqs_calls_per_second: f64,
    /// Upper bound on tracked series, so a flood of distinct selectors cannot exhaust memory.
    #[arg(long, env = "MAX_SERIES", default_value_t = 100_000, value_parser = integer_in::<u64>(1, 10_000_000))]
    pub max_series: u64,
}

/// Default `--sqs-calls-per-second`.
const DEFAULT_SQS_CALLS_PER_SECOND: f64 = 100.0;
/// Most `--sqs-calls-per-second` accepted.
const MAX_SQS_CALLS_PER_SECOND: f64 = 10_000.0;

impl Default for CacheFlags {
    /// The flags' defaults (for the `query` subcommand, which has none of them).
    fn default() -> Self {
        Self {
            max_value_age: Duration::from_secs(300),
            series_idle_timeout: Duration::from_secs(600),
            cloudwatch_calls_per_second: 10.0,
            sqs_calls_per_second: DEFAULT_SQS_CALLS_PER_SECOND,
            max_series: 100_000,
        }
    }
}

impl CacheFlags {
    /// The engine configuration these flags describe.
    pub fn to_config(&self) -> crate::engine::EngineConfig {
        crate::engine::EngineConfig {
            max_age: self.max_value_age,
            idle_timeout: self.series_idle_timeout,
            max_series: self.max_series,
            ..crate::engine::EngineConfig::default()
        }
    }
}

/// Limits on what a client can hold on the API port (see `server` for the design).
#[derive(Debug, Clone, Args)]
pub struct EdgeFlags {
    /// A client gets this long to finish its TLS handshake.
    #[arg(long, env = "TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration_in(MILLISECOND * 100, MINUTE * 5))]
    pub tls_handshake_timeout: Duration,
    /// After the handshake, a client gets this long to send a complete first request.
    #[arg(long, env = "HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration_in(MILLISECOND * 100, MINUTE * 5))]
    pub header_read_timeout: Duration,
    /// A connection on which no request starts or finishes for this long is closed (HTTP/2
    /// with a GOAWAY). Longer than --request-timeout.
    #[arg(long, env = "IDLE_TIMEOUT", default_value = "120s", value_parser = duration_in(SECOND * 2, DAY))]
    pub idle_timeout: Duration,
    /// A request not answered within this long gets `504 Timeout`.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "60s", value_parser = duration_in(SECOND, MINUTE * 10))]
    pub request_timeout: Duration,
    /// At most this many connections on the API port at once, handshakes included. At the cap,
    /// the oldest connection that has sent no request yet (then the one idle longest) is closed
    /// to make room; if all have requests in flight, new connections wait.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024, value_parser = integer_in::<u64>(1, 1_000_000))]
    pub max_connections: u64,
    /// HTTP/2: streams a client may have open at once on one connection.
    #[arg(long, env = "HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 100, value_parser = integer_in::<u32>(1, 1000))]
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2: response bytes buffered per stream while the client's receive window is closed.
    #[arg(long, env = "HTTP2_MAX_SEND_BUFFER", default_value_t = 65_536, value_parser = integer_in::<u64>(16_384, 16_777_216))]
    pub http2_max_send_buffer: u64,
    /// HTTP/2: ping a connection this often to find dead peers (no answer in 20s closes it).
    #[arg(long, env = "HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = duration_in(SECOND, HOUR))]
    pub http2_keepalive_interval: Duration,
    /// Request header bytes a client may send (HTTP/2: the decoded header list).
    #[arg(long, env = "MAX_REQUEST_HEADER_BYTES", default_value_t = 32_768, value_parser = integer_in::<u32>(8_192, 1_048_576))]
    pub max_request_header_bytes: u32,
}

impl EdgeFlags {
    fn problems(&self, problems: &mut Vec<String>) {
        if self.request_timeout >= self.idle_timeout {
            problems.push(format!(
                "--request-timeout ({}) must be shorter than --idle-timeout ({}): a connection whose only request is still running would be closed as idle",
                humantime::format_duration(self.request_timeout),
                humantime::format_duration(self.idle_timeout)
            ));
        }
    }

    /// The server's limits these flags describe.
    pub fn limits(&self) -> crate::server::EdgeLimits {
        crate::server::EdgeLimits {
            tls_handshake_timeout: self.tls_handshake_timeout,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            http2_max_concurrent_streams: self.http2_max_concurrent_streams,
            http2_max_send_buffer: usize::try_from(self.http2_max_send_buffer)
                .unwrap_or(usize::MAX),
            http2_keepalive_interval: self.http2_keepalive_interval,
            max_header_bytes: self.max_request_header_bytes,
            request_timeout: self.request_timeout,
        }
    }
}

const MILLISECOND: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// A clap value parser for a duration (`humantime`: `500ms`, `10s`, `5m`, `1h`) within
/// `min..=max`. Checking here, where the text is parsed, means nothing downstream can overflow
/// (`Instant + d`, `d * n`), and clap's error names the flag.
fn duration_in(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |text: &str| {
        let range = || {
            format!(
                "the accepted range is {} to {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            )
        };
        let value = humantime::parse_duration(text.trim()).map_err(|err| {
            format!(
                "{err} (a duration such as 500ms, 10s, 5m or 1h; {})",
                range()
            )
        })?;
        if value < min || value > max {
            return Err(format!(
                "{} is out of range: {}",
                humantime::format_duration(value),
                range()
            ));
        }
        Ok(value)
    }
}

/// A clap value parser for a whole number within `min..=max` (too large for the type included).
fn integer_in<T>(
    min: T,
    max: T,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy + Send + Sync + 'static,
{
    move |text: &str| {
        let value: T = text.trim().parse().map_err(|_| {
            format!("{text:?} is not a whole number in the accepted range {min} to {max}")
        })?;
        if value < min || value > max {
            return Err(format!(
                "{value} is out of range: the accepted range is {min} to {max}"
            ));
        }
        Ok(value)
    }
}

/// A clap value parser for a finite number within `min..=max`.
fn number_in(
    min: f64,
    max: f64,
) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |text: &str| {
        let value: f64 = text.trim().parse().map_err(|_| {
            format!("{text:?} is not a number; the accepted range is {min} to {max}")
        })?;
        // Also refuses NaN, which compares false with everything.
        if !(min..=max).contains(&value) {
            return Err(format!(
                "{value} is out of range: the accepted range is {min} to {max}"
            ));
        }
        Ok(value)
    }
}

impl ServeConfig {
    /// Every problem with the flags, before any socket opens.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        match (&self.tls_cert_file, &self.tls_private_key_file) {
            (Some(_), None) => problems.push(
                "--tls-cert-file is set without --tls-private-key-file (give both, or neither for a self-signed certificate)".to_string(),
            ),
            (None, Some(_)) => problems.push(
                "--tls-private-key-file is set without --tls-cert-file (give both, or neither for a self-signed certificate)".to_string(),
            ),
            _ => {}
        }
        for (flag, path) in [
            ("--config", &self.config),
            ("--tls-cert-file", &self.tls_cert_file),
            ("--tls-private-key-file", &self.tls_private_key_file),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                problems.push(format!("{flag}: {} is not a readable file", path.display()));
            }
        }
        if self.secure_port != 0
            && self.secure_port == self.admin_port
            && self.bind_address == self.admin_bind_address
        {
            problems.push(format!(
                "--secure-port and --admin-port are both {}",
                self.secure_port
            ));
        }
        self.edge.problems(&mut problems);
        self.auth.problems(&mut problems);
        self.aws.problems(&mut problems);
        self.delegate.problems(&mut problems);
        self.leader_election.problems(&mut problems);
        ConfigError::from_problems(problems)
    }
}

/// `query` flags.
#[derive(Debug, Clone, Args)]
pub struct QueryConfig {
    /// YAML file of metric definitions.
    #[arg(long = "config", env = "ADAPTER_CONFIG")]
    pub config: PathBuf,
    /// The HPA's namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The metric name the HPA asks for.
    #[arg(long)]
    pub metric: String,
    /// The HPA's metric selector, as kubectl writes it: `QueueName=orders,env=prod`.
    #[arg(long, default_value = "")]
    pub selector: String,
    /// Print the request only; do not call CloudWatch.
    #[arg(long)]
    pub dry_run: bool,
    /// AWS settings.
    #[command(flatten)]
    pub aws: AwsConfig,
}

impl QueryConfig {
    /// Every problem with the flags.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if !self.config.is_file() {
            problems.push(format!(
                "--config: {} is not a readable file",
                self.config.display()
            ));
        }
        if !self.dry_run {
            self.aws.problems(&mut problems);
        }
        ConfigError::from_problems(problems)
    }
}

/// Every configuration problem found.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", problems.join("\n  - "))]
pub struct ConfigError {
    /// The problems, each naming its flag.
    pub problems: Vec<String>,
}

impl ConfigError {
    fn from_problems(problems: Vec<String>) -> Result<(), ConfigError> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// Leader election on a `coordination.k8s.io/v1` Lease (see `leader`), with the flags
/// Kubernetes components use.
#[derive(Debug, Clone, Args)]
pub struct LeaderElectionFlags {
    /// Elect one leader among the replicas on a Lease: only the leader calls AWS and writes
    /// ExternalMetric status. Off: this replica always leads (one replica).
    #[arg(long, env = "LEADER_ELECT", action = ArgAction::Set, num_args = 0..=1,
          default_value_t = false, default_missing_value = "true")]
    pub leader_elect: bool,
    /// How long candidates wait, after the Lease last changed, before taking it over (whole
    /// seconds: it is written into the Lease).
    #[arg(long, env = "LEADER_ELECT_LEASE_DURATION", default_value = "15s", value_parser = whole_seconds_in(SECOND, HOUR))]
    pub leader_elect_lease_duration: Duration,
    /// How long the leader keeps leading after its last successful renewal was sent; must be
    /// shorter than the lease duration.
    #[arg(long, env = "LEADER_ELECT_RENEW_DEADLINE", default_value = "10s", value_parser = duration_in(MILLISECOND * 100, HOUR))]
    pub leader_elect_renew_deadline: Duration,
    /// How often the leader renews; candidates retry every 1 to 2.2 times this. 1.2 times it
    /// must be shorter than the renew deadline.
    #[arg(long, env = "LEADER_ELECT_RETRY_PERIOD", default_value = "2s", value_parser = duration_in(MILLISECOND * 100, MINUTE * 10))]
    pub leader_elect_retry_period: Duration,
    /// The Lease's name.
    #[arg(long, env = "LEADER_ELECT_RESOURCE_NAME", default_value = "cloudwatch-metrics-adapter", value_parser = dns_subdomain)]
    pub leader_elect_resource_name: String,
    /// The Lease's namespace. Default: the pod's (POD_NAMESPACE, else the service account's
    /// namespace file).
    #[arg(long, env = "LEADER_ELECT_RESOURCE_NAMESPACE", value_parser = dns_label)]
    pub leader_elect_resource_namespace: Option<String>,
    /// Where the other replicas reach this one when it leads (HOST:PORT: the pod IP and the
    /// secure port), advertised in the Lease.
    #[arg(long, env = "PEER_ADVERTISE_ADDRESS", value_parser = host_port)]
    pub peer_advertise_address: Option<String>,
    /// CA bundle (PEM) the leader's serving certificate chains to, for followers (the chart's
    /// serving CA). Re-read at each connection to the leader.
    #[arg(long, env = "PEER_CA_FILE")]
    pub peer_ca_file: Option<PathBuf>,
    /// The name the leader's serving certificate must carry (the Service's DNS name, e.g.
    /// `cloudwatch-metrics-adapter.cloudwatch-metrics-adapter.svc`); followers connect to the
    /// leader's pod IP and check this name.
    #[arg(long, env = "PEER_SERVER_NAME")]
    pub peer_server_name: Option<String>,
    /// The token a follower presents to the leader (the pod's ServiceAccount token), re-read
    /// for every request, so a rotated projected token is used.
    #[arg(
        long,
        env = "PEER_TOKEN_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub peer_token_file: PathBuf,
    /// Calls per second (all sources together) a replica may make itself when no leader has
    /// streamed values to it for the lease duration plus the retry period.
    #[arg(long, env = "PEER_FALLBACK_CALLS_PER_SECOND", default_value_t = 1.0, value_parser = number_in(0.01, 100.0))]
    pub peer_fallback_calls_per_second: f64,
}

/// Where a pod finds its own namespace when POD_NAMESPACE is not set.
const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

impl LeaderElectionFlags {
    /// The election's configuration, with a new unique identity (the pod's name and a random
    /// suffix); `None` with `--leader-elect=false`.
    pub fn to_config(&self) -> Result<Option<crate::leader::ElectionConfig>, ConfigError> {
        if !self.leader_elect {
            return Ok(None);
        }
        let mut problems = Vec::new();
        self.problems(&mut problems);
        ConfigError::from_problems(problems)?;
        let (Some(namespace), Some(pod)) = (self.namespace(), pod_name()) else {
            // `problems` said so already; kept for the types.
            return Err(ConfigError {
                problems: vec!["--leader-elect: no namespace or no pod name".to_string()],
            });
        };
        Ok(Some(
            self.election(namespace, crate::leader::unique_identity(&pod)),
        ))
    }

    fn election(&self, namespace: String, identity: String) -> crate::leader::ElectionConfig {
        crate::leader::ElectionConfig {
            namespace,
            name: self.leader_elect_resource_name.clone(),
            identity,
            peer_address: self.peer_advertise_address.clone(),
            lease_duration: self.leader_elect_lease_duration,
            renew_deadline: self.leader_elect_renew_deadline,
            retry_period: self.leader_elect_retry_period,
        }
    }

    /// The Lease's namespace: the flag, else the pod's.
    fn namespace(&self) -> Option<String> {
        first_non_empty([
            self.leader_elect_resource_namespace.clone(),
            std::env::var("POD_NAMESPACE").ok(),
            std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE_FILE).ok(),
        ])
    }

    fn problems(&self, problems: &mut Vec<String>) {
        use crate::leader::ElectionConfigError;
        if !self.leader_elect {
            return;
        }
        let format = |d: Duration| humantime::format_duration(d).to_string();
        let election = self.election("namespace".into(), "identity".into());
        match election.validate() {
            Ok(()) => {}
            Err(ElectionConfigError::LeaseNotAboveRenewDeadline { .. }) => problems.push(format!(
                "--leader-elect-lease-duration ({}) must be greater than --leader-elect-renew-deadline ({})",
                format(self.leader_elect_lease_duration),
                format(self.leader_elect_renew_deadline)
            )),
            Err(ElectionConfigError::RenewDeadlineNotAboveRetry { .. }) => problems.push(format!(
                "--leader-elect-renew-deadline ({}) must be greater than {} x --leader-elect-retry-period ({})",
                format(self.leader_elect_renew_deadline),
                crate::leader::JITTER_FACTOR,
                format(self.leader_elect_retry_period)
            )),
            Err(other) => problems.push(format!("--leader-elect: {other}")),
        }
        if self.namespace().is_none() {
            problems.push(format!(
                "--leader-elect-resource-namespace: not given, and the pod's namespace is unknown (no POD_NAMESPACE, no {SERVICE_ACCOUNT_NAMESPACE_FILE})"
            ));
        }
        if pod_name().is_none() {
            problems.push(
                "--leader-elect: this replica has no name to be known by in the Lease: set POD_NAME (the chart passes it from the downward API) or HOSTNAME".to_string(),
            );
        }
        // The peer link: without it, followers would only ever fall back.
        for (flag, missing) in [
            (
                "--peer-advertise-address",
                self.peer_advertise_address.is_none(),
            ),
            ("--peer-ca-file", self.peer_ca_file.is_none()),
            ("--peer-server-name", self.peer_server_name.is_none()),
        ] {
            if missing {
                problems.push(format!(
                    "{flag} is required with --leader-elect: followers get their values from the leader over the peer link (the chart sets it)"
                ));
            }
        }
        if let Some(name) = &self.peer_server_name
            && rustls::pki_types::ServerName::try_from(name.as_str()).is_err()
        {
            problems.push(format!(
                "--peer-server-name {name:?} is not a DNS name or IP address"
            ));
        }
    }
}

/// This pod's name: POD_NAME, else the host name.
fn pod_name() -> Option<String> {
    first_non_empty([
        std::env::var("POD_NAME").ok(),
        std::env::var("HOSTNAME").ok(),
        std::fs::read_to_string("/proc/sys/kernel/hostname").ok(),
    ])
}

/// The first candidate that is not blank, trimmed.
fn first_non_empty<const N: usize>(candidates: [Option<String>; N]) -> Option<String> {
    candidates
        .into_iter()
        .flatten()
        .map(|text| text.trim().to_string())
        .find(|text| !text.is_empty())
}

/// A clap value parser for a duration of whole seconds within `min..=max`.
fn whole_seconds_in(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    let within = duration_in(min, max);
    move |text: &str| {
        let value = within(text)?;
        if value.subsec_nanos() != 0 {
            return Err(format!(
                "{} is not a whole number of seconds (the Lease holds whole seconds)",
                humantime::format_duration(value)
            ));
        }
        Ok(value)
    }
}

/// Whether `label` is an RFC 1123 label: lower case letters, digits and '-', starting and
/// ending with a letter or digit, at most 63 characters.
fn is_dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// A clap value parser for a namespace (an RFC 1123 label).
fn dns_label(text: &str) -> Result<String, String> {
    let text = text.trim();
    if is_dns_label(text) {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not a namespace name (lower case letters, digits and '-', at most 63)"
        ))
    }
}

/// A clap value parser for an object name (an RFC 1123 subdomain).
fn dns_subdomain(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.len() <= 253 && text.split('.').all(is_dns_label) {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} is not an object name (lower case letters, digits, '-' and '.', at most 253)"
        ))
    }
}

/// A clap value parser for `HOST:PORT`: a DNS name, an IPv4 address or a bracketed IPv6
/// address, and a port from 1 to 65535.
fn host_port(text: &str) -> Result<String, String> {
    let text = text.trim();
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{text:?} is not HOST:PORT"));
    };
    if !port.parse::<u16>().is_ok_and(|port| port != 0) {
        return Err(format!(
            "{text:?}: the port must be a number from 1 to 65535"
        ));
    }
    // `$(POD_IP):6443` on an IPv6 cluster has no brackets: the port is after the last colon,
    // and the address is written back bracketed, as URLs need it.
    if let Ok(v6) = host.parse::<std::net::Ipv6Addr>() {
        return Ok(format!("[{v6}]:{port}"));
    }
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        }
    };
    if !host_ok {
        return Err(format!(
            "{text:?}: the host must be a DNS name, an IPv4 address or an IPv6 address"
        ));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_peer_address_takes_a_pod_ip_of_either_family() {
        assert_eq!(host_port("10.1.2.3:6443").unwrap(), "10.1.2.3:6443");
        assert_eq!(host_port("adapter.svc:443").unwrap(), "adapter.svc:443");
        // `$(POD_IP):6443` on an IPv6 cluster: bracketed for URLs.
        assert_eq!(host_port("fd00::1:6443").unwrap(), "[fd00::1]:6443");
        assert_eq!(host_port("[fd00::1]:6443").unwrap(), "[fd00::1]:6443");
        for bad in [
            "10.1.2.3",
            "host:0",
            "host:99999",
            ":6443",
            "a b:1",
            "[zz::1]:1",
        ] {
            assert!(host_port(bad).is_err(), "{bad}");
        }
    }

    fn serve(args: &[&str]) -> ServeConfig {
        let mut argv = vec!["cloudwatch-metrics-adapter", "serve"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(config) => config,
            _ => panic!("expected serve"),
        }
    }

    #[test]
    fn reports_every_problem_naming_the_flag() {
        let config = serve(&[
            "--tls-cert-file",
            "/nonexistent/cert.pem",
            "--aws-region",
            "US East",
            "--admin-port",
            "6443",
            "--cloudwatch-endpoint-url",
            "localhost:4599",
        ]);
        let err = config.validate().unwrap_err();
        let text = err.to_string();
        for needle in [
            "--tls-cert-file is set without --tls-private-key-file",
            "--tls-cert-file: /nonexistent/cert.pem is not a readable file",
            "--aws-region: \"US East\"",
            "--secure-port and --admin-port are both 6443",
            "--cloudwatch-endpoint-url",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in {text}");
        }
    }

    #[test]
    fn defaults_are_sensible() {
        let config = serve(&["--aws-region", "eu-west-1"]);
        assert_eq!(config.secure_port, 6443);
        assert_eq!(config.admin_port, 8080);
        assert_eq!(config.tls_reload_interval, Duration::from_secs(10));
        assert!(config.crd.watch_external_metrics);
        assert_eq!(config.crd.status_update_interval, Duration::from_secs(15));
        config.validate().unwrap();
        // Secure unless told otherwise: delegated authorization, no anonymous access.
        let auth = &config.auth;
        assert_eq!(auth.authorization_mode, AuthorizationMode::Delegated);
        assert!(!auth.anonymous_auth);
        assert!(!auth.authentication_skip_lookup);
        assert!(auth.needs_cluster());
        assert_eq!(auth.requestheader_username_headers, ["X-Remote-User"]);
        assert_eq!(auth.requestheader_group_headers, ["X-Remote-Group"]);
        assert_eq!(auth.requestheader_extra_headers_prefix, ["X-Remote-Extra-"]);
        assert_eq!(auth.requestheader_uid_headers, ["X-Remote-Uid"]);
        assert_eq!(
            auth.authorization_webhook_cache_unauthorized_ttl,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn auth_flags_parse_as_kube_apiserver_spells_them() {
        let config = serve(&[
            "--aws-region",
            "eu-west-1",
            "--authorization-mode=AlwaysAllow",
            "--anonymous-auth=true",
            "--authentication-skip-lookup",
            "--requestheader-allowed-names",
            "front-proxy-client,aggregator",
            "--requestheader-group-headers",
            "X-Remote-Group,X-Other-Group",
        ]);
        let auth = &config.auth;
        assert_eq!(auth.authorization_mode, AuthorizationMode::AlwaysAllow);
        assert!(auth.anonymous_auth);
        assert!(auth.authentication_skip_lookup);
        assert!(!auth.needs_cluster());
        assert_eq!(
            auth.requestheader_allowed_names,
            ["front-proxy-client", "aggregator"]
        );
        assert_eq!(
            auth.requestheader_group_headers,
            ["X-Remote-Group", "X-Other-Group"]
        );
        // Allowed names without any front-proxy CA would silently do nothing: refuse.
        let text = config.validate().unwrap_err().to_string();
        assert!(
            text.contains("--requestheader-allowed-names is set"),
            "{text}"
        );

        let config = serve(&[
            "--aws-region",
            "eu-west-1",
            "--anonymous-auth",
            "false",
            "--requestheader-uid-headers",
            "X Bad",
            "--client-ca-file",
            "/nonexistent/ca.pem",
        ]);
        assert!(!config.auth.anonymous_auth);
        let text = config.validate().unwrap_err().to_string();
        assert!(
            text.contains("--requestheader-uid-headers: \"X Bad\""),
            "{text}"
        );
        assert!(
            text.contains("--client-ca-file: /nonexistent/ca.pem"),
            "{text}"
        );
    }

    #[test]
    fn the_external_metric_watch_can_be_turned_off() {
        let config = serve(&[
            "--aws-region",
            "eu-west-1",
            "--watch-external-metrics=false",
        ]);
        assert!(!config.crd.watch_external_metrics);
        let config = serve(&[
            "--aws-region",
            "eu-west-1",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
        ]);
        let text = config.validate().unwrap_err().to_string();
        assert!(
            text.contains("--kubeconfig: /nonexistent/kubeconfig"),
            "{text}"
        );
    }

    /// Every duration and number flag is range-checked by its parser: the error names the flag
    /// and the accepted range, and no value that passes can overflow `Instant + d` or `d * n`.
    #[test]
    fn out_of_range_values_are_refused_where_they_are_parsed() {
        let refused = [
            ("--max-value-age", "7000000000000000000s"),
            ("--max-value-age", "0s"),
            ("--series-idle-timeout", "1000years"),
            ("--cloudwatch-timeout", "0s"),
            ("--cloudwatch-timeout", "1h"),
            ("--cloudwatch-calls-per-second", "1e300"),
            ("--cloudwatch-calls-per-second", "51"),
            ("--cloudwatch-calls-per-second", "1e-300"),
            ("--cloudwatch-calls-per-second", "NaN"),
            ("--cloudwatch-calls-per-second", "inf"),
            ("--status-writes-per-second", "0"),
            ("--status-update-interval", "0s"),
            ("--tls-reload-interval", "1ms"),
            ("--shutdown-delay", "1y"),
            ("--shutdown-grace-period", "100000h"),
            ("--authentication-token-webhook-cache-ttl", "0s"),
            ("--authorization-webhook-cache-authorized-ttl", "10years"),
            ("--authorization-webhook-cache-unauthorized-ttl", "10years"),
            ("--tls-handshake-timeout", "0s"),
            ("--header-read-timeout", "1h"),
            ("--idle-timeout", "18446744073709551615s"),
            ("--request-timeout", "0s"),
            ("--http2-keepalive-interval", "0s"),
            ("--max-connections", "0"),
            ("--max-connections", "18446744073709551616"),
            ("--http2-max-concurrent-streams", "0"),
            ("--http2-max-send-buffer", "1"),
            ("--max-request-header-bytes", "4294967295"),
            ("--max-series", "0"),
            ("--max-value-age", "soon"),
        ];
        for (flag, value) in refused {
            let argv = [
                "cloudwatch-metrics-adapter",
                "serve",
                "--aws-region",
                "eu-west-1",
                flag,
                value,
            ];
            let err = Cli::try_parse_from(argv).expect_err(&format!("{flag} {value} was accepted"));
            let text = err.to_string();
            assert!(text.contains(flag), "{flag} {value}: {text}");
            assert!(text.contains("accepted range"), "{flag} {value}: {text}");
        }
        // The bounds themselves are accepted.
        let config = serve(&[
            "--aws-region",
            "eu-west-1",
            "--max-value-age=7d",
            "--cloudwatch-calls-per-second=50",
            "--shutdown-grace-period=1h",
            "--tls-handshake-timeout=100ms",
            "--max-connections=1",
        ]);
        assert_eq!(config.cache.max_value_age, Duration::from_secs(7 * 86_400));
        config.validate().unwrap();
    }

    #[test]
    fn leader_election_is_off_by_default_with_client_go_timing() {
        let config = serve(&["--aws-region", "eu-west-1"]);
        let flags = &config.leader_election;
        assert!(!flags.leader_elect);
        assert_eq!(flags.leader_elect_lease_duration, Duration::from_secs(15));
        assert_eq!(flags.leader_elect_renew_deadline, Duration::from_secs(10));
        assert_eq!(flags.leader_elect_retry_period, Duration::from_secs(2));
        assert_eq!(
            flags.leader_elect_resource_name,
            "cloudwatch-metrics-adapter"
        );
        assert!(flags.to_config().unwrap().is_none());
    }

    #[test]
    fn leader_election_flags_are_checked_and_make_an_election() {
        let config = serve(&[
            "--aws-region",
            "eu-west-1",
            "--leader-elect",
            "--leader-elect-resource-namespace",
            "adapter",
            "--peer-advertise-address",
            "10.1.2.3:6443",
            "--peer-ca-file",
            "/etc/adapter/ca.crt",
            "--peer-server-name",
            "adapter.adapter.svc",
        ]);
        let election = config.leader_election.to_config().unwrap().unwrap();
        assert_eq!(election.namespace, "adapter");
        assert_eq!(election.name, "cloudwatch-metrics-adapter");
        assert_eq!(election.peer_address.as_deref(), Some("10.1.2.3:6443"));
        assert!(election.identity.contains('_'), "{}", election.identity);
        election.validate().unwrap();

        // Without the peer link's flags, followers could only ever fall back: refused.
        let config = serve(&[
            "--aws-region",
            "eu-west-1",
            "--leader-elect",
            "--leader-elect-resource-namespace",
            "adapter",
        ]);
        let text = config.validate().unwrap_err().to_string();
        for flag in [
            "--peer-advertise-address",
            "--peer-ca-file",
            "--peer-server-name",
        ] {
            assert!(
                text.contains(&format!("{flag} is required with --leader-elect")),
                "{text}"
            );
        }

        // Each timing is fine alone; together they break client-go's rules.
        let config = serve(&[
            "--aws-region",
            "eu-west-1",
            "--leader-elect=true",
            "--leader-elect-resource-namespace=adapter",
            "--leader-elect-lease-duration=10s",
            "--leader-elect-renew-deadline=10s",
        ]);
        let text = config.validate().unwrap_err().to_string();
        assert!(
            text.contains("--leader-elect-lease-duration (10s) must be greater than --leader-elect-renew-deadline (10s)"),
            "{text}"
        );
        let config = serve(&[
            "--aws-region",
            "eu-west-1",
            "--leader-elect",
            "--leader-elect-resource-namespace=adapter",
            "--leader-elect-retry-period=9s",
        ]);
        let text = config.validate().unwrap_err().to_string();
        assert!(
            text.contains("--leader-elect-renew-deadline (10s) must be greater than 1.2 x --leader-elect-retry-period (9s)"),
            "{text}"
        );
        // Off, the same timings are not checked: they are not used.
        let config = serve(&[
            "--aws-region",
            "eu-west-1",
            "--leader-elect-retry-period=9s",
        ]);
        config.validate().unwrap();
    }

    #[test]
    fn leader_election_values_are_refused_where_parsed() {
        let refused = [
            (
                "--leader-elect-lease-duration",
                "15500ms",
                "whole number of seconds",
            ),
            ("--leader-elect-lease-duration", "2h", "accepted range"),
            ("--leader-elect-renew-deadline", "50ms", "accepted range"),
            ("--leader-elect-retry-period", "1h", "accepted range"),
            (
                "--leader-elect-resource-name",
                "Not_A_Name",
                "not an object name",
            ),
            (
                "--leader-elect-resource-namespace",
                "a.b",
                "not a namespace name",
            ),
            ("--peer-advertise-address", "10.1.2.3", "not HOST:PORT"),
            ("--peer-advertise-address", "10.1.2.3:0", "the port must be"),
            ("--peer-advertise-address", ":6443", "the host must be"),
        ];
        for (flag, value, needle) in refused {
            let argv = ["cloudwatch-metrics-adapter", "serve", flag, value];
            let err = Cli::try_parse_from(argv).expect_err(&format!("{flag} {value} was accepted"));
            let text = err.to_string();
            assert!(
                text.contains(flag) && text.contains(needle),
                "{flag} {value}: {text}"
            );
        }
        let config = serve(&[
            "--peer-advertise-address=[fe80::1]:6443",
            "--leader-elect-resource-name=adapter.lock",
        ]);
        assert_eq!(
            config.leader_election.peer_advertise_address.as_deref(),
            Some("[fe80::1]:6443")
        );
        assert_eq!(
            first_non_empty([None, Some("  ".into()), Some(" pod-1\n".into())]),
            Some("pod-1".to_string())
        );
    }
}
