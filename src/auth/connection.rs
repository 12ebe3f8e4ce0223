//! What a connection's client certificate proves, worked out once per connection and per
//! version of the trusted CAs instead of on every request.
//!
//! The TLS layer accepted the chain against the CAs trusted at the handshake. Authentication
//! needs more (which CA, the front proxy's allowed names, the subject), and must follow CA
//! rotations that happen while a long-lived HTTP/2 connection stays open, and certificates that
//! expire while it does. So the verdict is kept on the connection with the trust generation it
//! was reached under and the moment the chain stops being valid; a request under another
//! generation, or after that moment, verifies the chain again.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::UserInfo;
use super::requestheader;
use super::trust::Trust;
use super::x509::{self, CertificateError, Subject};
use crate::remote::PeerCertificate;

/// What the front-proxy half of the trust says about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontProxyVerdict {
    /// No front-proxy CA is configured.
    NotConfigured,
    /// Chains to the requestheader CA and has an allowed CN: its identity headers are believed.
    Trusted,
    /// Does not chain to it, or its CN is not allowed.
    Refused,
}

/// What the client-CA half of the trust says about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCaVerdict {
    /// No client CA is configured.
    NotConfigured,
    /// Chains to the client CA: the holder is this user (CN, groups from O).
    User(Arc<UserInfo>),
    /// Chains to the client CA but has no CN: no identity, and no failure either (kube's reading).
    NoName,
    /// Does not chain to it, or cannot be read.
    Refused,
}

/// A certificate's verdict under one trust generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The trust generation it was reached under.
    pub generation: u64,
    /// Reusable while the clock (whole seconds since the epoch) is at most this: the earliest
    /// `notAfter` in the chain. `None`: nothing was accepted, so nothing can expire.
    pub valid_through: Option<u64>,
    /// Front-proxy half.
    pub front_proxy: FrontProxyVerdict,
    /// Client-CA half.
    pub client_ca: ClientCaVerdict,
}

impl Verdict {
    fn reusable(&self, generation: u64, now: u64) -> bool {
        self.generation == generation && self.valid_through.is_none_or(|until| now <= until)
    }
}

/// The leaf's subject and the chain's earliest expiry, read once per connection.
#[derive(Debug)]
struct ChainFacts {
    subject: Subject,
    not_after: u64,
}

/// The identity a front proxy last asserted on this connection, with the header lines it was
/// read from.
#[derive(Debug)]
struct AssertedIdentity {
    generation: u64,
    lines: Vec<(HeaderName, HeaderValue)>,
    user: Arc<UserInfo>,
}

/// What this module keeps with a connection's certificate (in its
/// [`PeerCertificate::memo`]), shared by every request of the connection.
#[derive(Debug, Default)]
pub struct Memo {
    facts: std::sync::OnceLock<Result<ChainFacts, CertificateError>>,
    verdict: ArcSwapOption<Verdict>,
    /// Held while a verdict is worked out, so concurrent HTTP/2 streams verify once.
    verifying: Mutex<()>,
    /// The aggregator sends the same caller (the HPA controller) request after request: the
    /// last identity read from the headers is reused while the headers are the same, so a warm
    /// request allocates nothing for it.
    asserted: ArcSwapOption<AssertedIdentity>,
}

/// A connection's client certificate chain (end entity first), with what it was last found to
/// prove.
#[derive(Debug, Clone, Copy)]
pub struct ClientCertificate<'a> {
    chain: &'a [CertificateDer<'static>],
    memo: &'a Memo,
}

impl<'a> ClientCertificate<'a> {
    /// The certificate a connection's peer presented, with what this module keeps with it.
    /// `None` only if its memo slot holds something else (nothing else uses it).
    pub fn of(certificate: &'a PeerCertificate) -> Option<Self> {
        Some(ClientCertificate {
            chain: certificate.chain(),
            memo: certificate.memo(Memo::default)?,
        })
    }

    /// The identity the front proxy asserts in `headers`, read with the settings of `trust`
    /// (whose front-proxy half must be what this connection's verdict trusted): the last one
    /// read on this connection when the identity header lines are exactly the same, else read
    /// anew. `None` when no user-name header has a value.
    pub fn front_proxy_identity(
        &self,
        trust: &Trust,
        headers: &HeaderMap,
    ) -> Option<Arc<UserInfo>> {
        let settings = &trust.request_header.as_ref()?.settings;
        if let Some(asserted) = &*self.memo.asserted.load()
            && asserted.generation == trust.generation
            && same_lines(
                requestheader::identity_lines(headers, settings),
                &asserted.lines,
            )
        {
            return Some(asserted.user.clone());
        }
        let user = Arc::new(requestheader::identity(headers, settings)?.with_authenticated_group());
        let lines = requestheader::identity_lines(headers, settings)
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        self.memo.asserted.store(Some(Arc::new(AssertedIdentity {
            generation: trust.generation,
            lines,
            user: user.clone(),
        })));
        Some(user)
    }

    /// The chain, end entity first.
    pub fn chain(&self) -> &'a [CertificateDer<'static>] {
        self.chain
    }

    /// The verdict under `trust` at `now`: the one kept on the connection when it is still
    /// reusable, else a new one (then `on_verify` runs, once per verification).
    pub fn verdict(
        &self,
        trust: &Trust,
        now: SystemTime,
        on_verify: impl FnOnce(),
    ) -> Arc<Verdict> {
        let seconds = unix_seconds(now);
        if let Some(verdict) = &*self.memo.verdict.load()
            && verdict.reusable(trust.generation, seconds)
        {
            return verdict.clone();
        }
        // A poisoned lock only means another stream panicked while verifying; the stored
        // verdict is replaced whole, never left half-written.
        let _verifying = self
            .memo
            .verifying
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(verdict) = &*self.memo.verdict.load()
            && verdict.reusable(trust.generation, seconds)
        {
            return verdict.clone();
        }
        on_verify();
        let verdict = Arc::new(self.verify(trust, now));
        self.memo.verdict.store(Some(verdict.clone()));
        verdict
    }

    fn verify(&self, trust: &Trust, now: SystemTime) -> Verdict {
        let facts = self.memo.facts.get_or_init(|| read_chain(self.chain));
        let at = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
        // A chain this server cannot read proves no one (Go would not have completed the
        // handshake with it).
        let Ok(facts) = facts else {
            return Verdict {
                generation: trust.generation,
                valid_through: None,
                front_proxy: if trust.request_header.is_some() {
                    FrontProxyVerdict::Refused
                } else {
                    FrontProxyVerdict::NotConfigured
                },
                client_ca: if trust.client_ca.is_some() {
                    ClientCaVerdict::Refused
                } else {
                    ClientCaVerdict::NotConfigured
                },
            };
        };
        let common_name = facts.subject.common_name.as_deref();
        let front_proxy = match &trust.request_header {
            None => FrontProxyVerdict::NotConfigured,
            Some(front_proxy) => match front_proxy.ca.verify(self.chain, at) {
                Ok(()) if front_proxy.settings.allows(common_name) => FrontProxyVerdict::Trusted,
                _ => FrontProxyVerdict::Refused,
            },
        };
        let client_ca = match &trust.client_ca {
            None => ClientCaVerdict::NotConfigured,
            Some(ca) => match ca.verify(self.chain, at) {
                Ok(()) => match common_name.filter(|name| !name.is_empty()) {
                    Some(name) => ClientCaVerdict::User(Arc::new(
                        UserInfo {
                            name: name.to_string(),
                            groups: facts.subject.organizations.clone(),
                            ..UserInfo::default()
                        }
                        .with_authenticated_group(),
                    )),
                    None => ClientCaVerdict::NoName,
                },
                Err(_) => ClientCaVerdict::Refused,
            },
        };
        let accepted = front_proxy == FrontProxyVerdict::Trusted
            || matches!(
                client_ca,
                ClientCaVerdict::User(_) | ClientCaVerdict::NoName
            );
        Verdict {
            generation: trust.generation,
            valid_through: accepted.then_some(facts.not_after),
            front_proxy,
            client_ca,
        }
    }
}

/// Whether a request's identity header lines are exactly those remembered.
fn same_lines<'a>(
    mut now: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    then: &[(HeaderName, HeaderValue)],
) -> bool {
    let mut then = then.iter();
    loop {
        match (now.next(), then.next()) {
            (Some((name, value)), Some((old_name, old_value)))
                if name == old_name && value == old_value => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0)
}

/// The leaf's subject and the earliest `notAfter` of every certificate presented (a path
/// through any of them is only valid until then; past it, the chain is simply verified again).
fn read_chain(chain: &[CertificateDer<'_>]) -> Result<ChainFacts, CertificateError> {
    let (leaf, intermediates) = chain
        .split_first()
        .ok_or(CertificateError::Unparseable("no certificate".to_string()))?;
    let leaf = x509::read(leaf)?;
    let mut not_after = unix_seconds(leaf.not_after);
    for intermediate in intermediates {
        not_after = not_after.min(unix_seconds(x509::read(intermediate)?.not_after));
    }
    Ok(ChainFacts {
        subject: leaf.subject,
        not_after,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::auth::test_ca::{Ca, ca};
    use crate::auth::trust::{CaBundle, RequestHeaderSettings, RequestHeaderTrust, TrustStore};
    use std::cell::Cell;
    use std::time::Duration;

    /// A client certificate valid from `not_before` to `not_after` (seconds since the epoch).
    fn leaf(
        ca: &Ca,
        cn: &str,
        o: Option<&str>,
        not_before: i64,
        not_after: i64,
    ) -> PeerCertificate {
        PeerCertificate::new(vec![ca.leaf(cn, o, Some((not_before, not_after)))])
    }

    fn kept(certificate: &PeerCertificate) -> ClientCertificate<'_> {
        ClientCertificate::of(certificate).unwrap()
    }

    fn front_proxy(ca: &Ca, allowed: &[&str]) -> Option<Arc<RequestHeaderTrust>> {
        Some(Arc::new(RequestHeaderTrust {
            ca: CaBundle::from_pem(ca.pem.as_bytes()).unwrap(),
            settings: RequestHeaderSettings::new(
                allowed.iter().map(|s| s.to_string()).collect(),
                &["X-Remote-User".into()],
                &["X-Remote-Group".into()],
                &[],
                &[],
            )
            .unwrap(),
        }))
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_verdict_is_reached_once_per_trust_generation() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let proxy = ca("front-proxy-ca");
        let rotated = ca("front-proxy-ca");
        let clients = ca("kubernetes");
        let store = TrustStore::new(
            front_proxy(&proxy, &["front-proxy-client"]),
            Some(Arc::new(
                CaBundle::from_pem(clients.pem.as_bytes()).unwrap(),
            )),
        );
        let year = 365 * 86_400;
        let aggregator = leaf(&proxy, "front-proxy-client", None, 0, (NOW + year) as i64);
        let aggregator = kept(&aggregator);
        let verifications = Cell::new(0);
        let count = || verifications.set(verifications.get() + 1);

        for second in 0..5 {
            let verdict = aggregator.verdict(&store.current(), at(NOW + second), count);
            assert_eq!(verdict.front_proxy, FrontProxyVerdict::Trusted);
            assert_eq!(verdict.client_ca, ClientCaVerdict::Refused);
            assert_eq!(verdict.valid_through, Some(NOW + year));
        }
        assert_eq!(verifications.get(), 1);

        // The CA rotates while the connection lives: the next request verifies again, and the
        // old chain proves no one any more.
        store.set_request_header(front_proxy(&rotated, &["front-proxy-client"]));
        let verdict = aggregator.verdict(&store.current(), at(NOW + 5), count);
        assert_eq!(verdict.front_proxy, FrontProxyVerdict::Refused);
        assert_eq!(verdict.valid_through, None);
        assert_eq!(verifications.get(), 2);
        aggregator.verdict(&store.current(), at(NOW + 6), count);
        assert_eq!(verifications.get(), 2);

        // Allowed names are part of the trust: a change of names is a new generation too.
        store.set_request_header(front_proxy(&proxy, &["someone-else"]));
        let verdict = aggregator.verdict(&store.current(), at(NOW + 7), count);
        assert_eq!(verdict.front_proxy, FrontProxyVerdict::Refused);
        assert_eq!(verifications.get(), 3);

        // A client-CA certificate is a user: CN, O, and system:authenticated.
        let alice = leaf(&clients, "alice", Some("team-a"), 0, (NOW + year) as i64);
        let alice = kept(&alice);
        let verdict = alice.verdict(&store.current(), at(NOW), count);
        let ClientCaVerdict::User(user) = &verdict.client_ca else {
            panic!("{verdict:?}")
        };
        assert_eq!(user.name, "alice");
        assert_eq!(user.groups, ["team-a", crate::auth::AUTHENTICATED]);
        assert_eq!(verdict.front_proxy, FrontProxyVerdict::Refused);
        // Without a CN it chains but names no one.
        let nameless = leaf(&clients, "", None, 0, (NOW + year) as i64);
        let nameless = kept(&nameless);
        let verdict = nameless.verdict(&store.current(), at(NOW), count);
        assert_eq!(verdict.client_ca, ClientCaVerdict::NoName);
    }

    #[test]
    fn a_certificate_that_expires_while_the_connection_lives_stops_counting() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let proxy = ca("front-proxy-ca");
        let store = TrustStore::new(front_proxy(&proxy, &[]), None);
        let expires = NOW + 60;
        let aggregator = leaf(&proxy, "front-proxy-client", None, 0, expires as i64);
        let aggregator = kept(&aggregator);
        let verifications = Cell::new(0);
        let count = || verifications.set(verifications.get() + 1);
        let trust = store.current();
        assert_eq!(
            aggregator.verdict(&trust, at(NOW), count).front_proxy,
            FrontProxyVerdict::Trusted
        );
        // notAfter is inclusive: the last second still counts, without a new verification.
        assert_eq!(
            aggregator.verdict(&trust, at(expires), count).front_proxy,
            FrontProxyVerdict::Trusted
        );
        assert_eq!(verifications.get(), 1);
        let after = aggregator.verdict(&trust, at(expires + 1), count);
        assert_eq!(after.front_proxy, FrontProxyVerdict::Refused);
        assert_eq!(verifications.get(), 2);
        // Refused for good: time does not run backwards into validity.
        aggregator.verdict(&trust, at(expires + 100), count);
        assert_eq!(verifications.get(), 2);

        // Not yet valid is refused as well (the handshake refuses it first; a verdict never
        // trusts it either).
        let early = leaf(
            &proxy,
            "front-proxy-client",
            None,
            (NOW + 10) as i64,
            (NOW + 99) as i64,
        );
        assert_eq!(
            kept(&early).verdict(&trust, at(NOW), || {}).front_proxy,
            FrontProxyVerdict::Refused
        );
    }

    #[test]
    fn the_last_asserted_identity_is_reused_while_its_header_lines_are_the_same() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let proxy = ca("front-proxy-ca");
        let store = TrustStore::new(front_proxy(&proxy, &[]), None);
        let aggregator = leaf(&proxy, "front-proxy-client", None, 0, i64::from(i32::MAX));
        let aggregator = kept(&aggregator);
        let headers = |lines: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in lines {
                map.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            map
        };
        let hpa = [
            ("X-Remote-User", "hpa"),
            ("X-Remote-Group", "a"),
            ("X-Remote-Group", "b"),
            ("Accept", "*/*"),
        ];
        let trust = store.current();
        let first = aggregator
            .front_proxy_identity(&trust, &headers(&hpa))
            .unwrap();
        assert_eq!(first.name, "hpa");
        assert_eq!(first.groups, ["a", "b", crate::auth::AUTHENTICATED]);
        // The same lines (other headers may differ): the same identity, nothing parsed.
        let mut same = hpa.to_vec();
        same[3] = ("Accept", "application/json");
        let again = aggregator
            .front_proxy_identity(&trust, &headers(&same))
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        // Any difference in what identity reads is a new identity: a value, a line more or
        // less, their order.
        for lines in [
            vec![
                ("X-Remote-User", "hpa"),
                ("X-Remote-Group", "a"),
                ("X-Remote-Group", "c"),
            ],
            vec![("X-Remote-User", "hpa"), ("X-Remote-Group", "a")],
            vec![
                ("X-Remote-User", "hpa"),
                ("X-Remote-Group", "b"),
                ("X-Remote-Group", "a"),
            ],
        ] {
            let other = aggregator
                .front_proxy_identity(&trust, &headers(&lines))
                .unwrap();
            assert!(!Arc::ptr_eq(&first, &other), "{lines:?}");
            assert_ne!(*first, *other, "{lines:?}");
        }
        // No user name: no identity, and nothing remembered is returned for it.
        assert!(
            aggregator
                .front_proxy_identity(&trust, &headers(&[("X-Remote-Group", "a")]))
                .is_none()
        );
        // A new trust generation (say, other header names) reads the headers anew.
        let before = aggregator
            .front_proxy_identity(&trust, &headers(&hpa))
            .unwrap();
        store.set_request_header(front_proxy(&proxy, &[]));
        let after = aggregator
            .front_proxy_identity(&store.current(), &headers(&hpa))
            .unwrap();
        assert!(!Arc::ptr_eq(&before, &after));
        assert_eq!(*before, *after);
    }

    #[test]
    fn an_unreadable_chain_proves_no_one() {
        let store = TrustStore::new(None, None);
        let garbage = PeerCertificate::new(vec![CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])]);
        let garbage = kept(&garbage);
        let verdict = garbage.verdict(&store.current(), at(NOW), || {});
        assert_eq!(verdict.front_proxy, FrontProxyVerdict::NotConfigured);
        assert_eq!(verdict.client_ca, ClientCaVerdict::NotConfigured);
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let proxy = ca("front-proxy-ca");
        let store = TrustStore::new(front_proxy(&proxy, &[]), None);
        let verdict = garbage.verdict(&store.current(), at(NOW), || {});
        assert_eq!(verdict.front_proxy, FrontProxyVerdict::Refused);
    }
}
