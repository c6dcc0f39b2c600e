//! The agent's TLS: its certificate and key, and the CA its clients' certificates must chain
//! to. All three are files that cert-manager (or an operator) renews in place; each new
//! connection checks whether they changed and, if so, loads them again.

use std::{
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use node_tracer_client::{PemError, certs, key, provider, roots};
use rustls::{ServerConfig, server::WebPkiClientVerifier};
use tokio_rustls::TlsAcceptor;

/// `--tls-cert`, `--tls-key` and `--tls-client-ca`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Without it the agent speaks TLS but asks no client for a certificate (the bearer token
    /// then proves who a caller is).
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS files")]
    Pem(#[from] PemError),
    #[error("TLS configuration")]
    Config(#[from] rustls::Error),
    #[error("the client CA in {}", path.display())]
    Verifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// (modification time in ns, size, inode) of each file, to notice a renewal.
type Stamps = Vec<Option<(i128, u64, u64)>>;

/// A TLS acceptor that follows its files.
pub struct Reloading {
    files: TlsFiles,
    current: Mutex<(Stamps, TlsAcceptor)>,
}

impl Reloading {
    /// Loads the files now: bad ones fail the start.
    pub fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let stamps = stamps(&files);
        let acceptor = TlsAcceptor::from(Arc::new(build(&files)?));
        Ok(Self {
            files,
            current: Mutex::new((stamps, acceptor)),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The acceptor for a new connection, loaded again if a file changed. A renewal that does
    /// not load (a half-written key, say) keeps the last good one and says why.
    pub fn acceptor(&self) -> TlsAcceptor {
        let now = stamps(&self.files);
        let mut cur = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now != cur.0 {
            match build(&self.files) {
                Ok(c) => {
                    log::info!("TLS files changed: loaded them again");
                    cur.1 = TlsAcceptor::from(Arc::new(c));
                }
                Err(e) => log::warn!(
                    "TLS files changed but do not load, keeping the previous ones: {}",
                    super::chain(&e)
                ),
            }
            cur.0 = now;
        }
        cur.1.clone()
    }
}

fn stamps(f: &TlsFiles) -> Stamps {
    [Some(&f.cert), Some(&f.key), f.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| {
            std::fs::metadata(p).ok().map(|m| {
                (
                    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
                    m.len(),
                    m.ino(),
                )
            })
        })
        .collect()
}

fn build(f: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &f.client_ca {
        Some(ca) => {
            // A certificate that is offered must verify (expired or foreign: the handshake
            // fails); none at all is allowed, so probes and Prometheus may use TLS without one
            // for /metrics and /healthz, while /snapshot then asks for the token.
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|source| TlsError::Verifier {
                        path: ca.clone(),
                        source,
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs(&f.cert)?, key(&f.key)?)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
