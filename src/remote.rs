//! What the edge knows about the other end of a connection, handed to each of its requests as
//! a request extension: the peer's address and the certificate chain it presented in the TLS
//! handshake.
//!
//! A leaf, so that the edge ([`crate::server`]) and authentication ([`crate::auth`]) need not
//! know each other: the edge builds a [`Peer`] once per connection, authentication reads it.
//! What authentication works out about a certificate (which CA it chains to, the identity it
//! proves) holds for every request of the connection, and an HTTP/2 connection from the
//! aggregator carries thousands; [`PeerCertificate::memo`] keeps it with the certificate, in a
//! slot whose type only its user knows.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use rustls_pki_types::CertificateDer;

/// The other end of a connection, as every request on it sees it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub address: SocketAddr,
    /// The certificate chain the client presented, if any, shared by every request of the
    /// connection.
    pub certificate: Option<Arc<PeerCertificate>>,
}

/// A client's certificate chain (end entity first). It chained to a CA trusted at handshake
/// time; what it proves now is for authentication to decide (CAs rotate while HTTP/2
/// connections stay open).
pub struct PeerCertificate {
    chain: Vec<CertificateDer<'static>>,
    memo: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for PeerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCertificate")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl PeerCertificate {
    /// The chain a client presented, end entity first.
    pub fn new(chain: Vec<CertificateDer<'static>>) -> Self {
        PeerCertificate {
            chain,
            memo: OnceLock::new(),
        }
    }

    /// The chain, end entity first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// What its user keeps with this certificate for the connection's lifetime, made by `init`
    /// on first use. One type per certificate: `None` if a memo of another type is already
    /// kept.
    pub fn memo<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Option<&T> {
        self.memo
            .get_or_init(|| Box::new(init()))
            .downcast_ref::<T>()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_memo_is_made_once_and_kept_for_its_type_only() {
        let certificate = PeerCertificate::new(vec![CertificateDer::from(vec![1, 2, 3])]);
        let made = AtomicUsize::new(0);
        let memo = || {
            made.fetch_add(1, Ordering::Relaxed);
            AtomicUsize::new(7)
        };
        certificate
            .memo(memo)
            .unwrap()
            .fetch_add(1, Ordering::Relaxed);
        assert_eq!(certificate.memo(memo).unwrap().load(Ordering::Relaxed), 8);
        assert_eq!(made.load(Ordering::Relaxed), 1);
        assert!(certificate.memo(|| "another type").is_none());
        assert_eq!(certificate.chain().len(), 1);
    }
}
