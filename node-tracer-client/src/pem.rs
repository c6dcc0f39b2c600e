//! Certificates and keys from PEM files, for both ends of the API: the clients' CA and client
//! certificate, and the agent's own certificate and its clients' CA.

use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: no certificate in it", path.display())]
    NoCertificate { path: PathBuf },
}

/// Every certificate in a PEM file (a chain, or a bundle of CAs).
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|source| PemError::Read {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| PemError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A root store of every certificate in a PEM file.
pub fn roots(path: &Path) -> Result<rustls::RootCertStore, PemError> {
    let mut store = rustls::RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(certs(path)?);
    if added == 0 {
        return Err(PemError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(store)
}

/// The crypto both ends use: ring, chosen at build time (no process-wide default to race on).
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
