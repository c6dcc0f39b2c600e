//! Who may read the agent. `/metrics` and `/healthz` are for anyone who reaches `--listen`
//! (Prometheus, the kubelet's probes). `/snapshot` (every pod's name, addresses, MACs and
//! namespace paths) and `/trace/icmp` (a live stream of the pods' ICMP headers) are for a caller
//! that proves who it is: a bearer token (`--api-token-file`) or a TLS client certificate
//! signed by `--tls-client-ca`. With neither configured they answer only on a loopback
//! listener, where only the node itself can ask.

pub mod tls;
pub mod token;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hyper::{HeaderMap, StatusCode, header::AUTHORIZATION};

pub use tls::{Reloading, TlsError, TlsFiles};
pub use token::{TokenError, TokenFile};

/// `run`'s API options.
#[derive(Debug, Clone, Default)]
pub struct ApiOptions {
    pub token_file: Option<PathBuf>,
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("--api-token-file")]
    Token(#[from] TokenError),
    #[error("--tls-cert / --tls-key / --tls-client-ca")]
    Tls(#[from] TlsError),
}

/// The endpoints that show pods and their traffic.
pub const PROTECTED: [&str; 2] = ["/snapshot", "/trace/icmp"];

/// Why a request was refused: the `reason` label of `node_tracer_api_denied_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No token and no client certificate.
    Missing,
    /// A token that is not the one in the file.
    WrongToken,
    /// Nothing is configured and the listener is not loopback: no credential could help.
    NotHere,
    /// A TLS handshake failed (an expired or foreign client certificate, or not TLS at all).
    TlsHandshake,
}

impl Denial {
    pub const ALL: [Denial; 4] = [
        Denial::Missing,
        Denial::WrongToken,
        Denial::NotHere,
        Denial::TlsHandshake,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Denial::Missing => "missing_credentials",
            Denial::WrongToken => "wrong_token",
            Denial::NotHere => "not_served_here",
            Denial::TlsHandshake => "tls_handshake",
        }
    }

    /// The answer's status and its one line (what a client prints after "refused: ").
    pub fn answer(self) -> (StatusCode, &'static str) {
        match self {
            Denial::Missing | Denial::WrongToken => (
                StatusCode::UNAUTHORIZED,
                "no or wrong token (this endpoint needs the agent's API token or a client certificate)\n",
            ),
            Denial::NotHere => (
                StatusCode::FORBIDDEN,
                "this agent serves /snapshot and /trace/icmp only on a loopback listener \
                 (start it with --api-token-file or --tls-client-ca to serve them here)\n",
            ),
            Denial::TlsHandshake => (StatusCode::BAD_REQUEST, "TLS handshake failed\n"),
        }
    }
}

/// What a connection proved before its first request.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub peer: SocketAddr,
    /// A client certificate that chains to `--tls-client-ca` was presented.
    pub verified_cert: bool,
}

/// The agent's access policy and its refusals.
pub struct Access {
    token: Option<TokenFile>,
    tls: Option<Reloading>,
    /// Where the agent listens: loopback means only the node itself can connect.
    listen: SocketAddr,
    denied: [AtomicU64; 4],
    /// Refusals are logged at most once per [`LOG_EVERY`], with how many came in between: a
    /// scanner must not fill the log.
    last_log: Mutex<(Option<Instant>, u64)>,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

impl Access {
    /// Reads the token and TLS files now, so bad ones fail the start.
    pub fn new(opts: &ApiOptions, listen: SocketAddr) -> Result<Self, ApiError> {
        Ok(Self {
            token: opts
                .token_file
                .as_deref()
                .map(TokenFile::open)
                .transpose()?,
            tls: opts.tls.clone().map(Reloading::new).transpose()?,
            listen,
            denied: Default::default(),
            last_log: Mutex::new((None, 0)),
        })
    }

    pub fn tls(&self) -> Option<&Reloading> {
        self.tls.as_ref()
    }

    fn client_certs(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.files().client_ca.is_some())
    }

    /// One line for the start-up log: what is served to whom. Paths only, never a secret.
    pub fn describe(&self) -> String {
        let mut how = Vec::new();
        if let Some(t) = &self.token {
            how.push(format!("the bearer token in {}", t.path().display()));
        }
        if let Some(ca) = self.tls.as_ref().and_then(|t| t.files().client_ca.as_ref()) {
            how.push(format!("a client certificate signed by {}", ca.display()));
        }
        let tls = if self.tls.is_some() {
            "TLS and plain HTTP on the same port; "
        } else {
            ""
        };
        if how.is_empty() {
            if self.listen.ip().is_loopback() {
                format!(
                    "{tls}/snapshot and /trace/icmp are open to every caller on this loopback \
                     listener (no --api-token-file or --tls-client-ca)"
                )
            } else {
                format!(
                    "{tls}/snapshot and /trace/icmp are refused on {} (not loopback, and no \
                     --api-token-file or --tls-client-ca); /metrics and /healthz are open",
                    self.listen
                )
            }
        } else {
            format!(
                "{tls}/snapshot and /trace/icmp need {}; /metrics and /healthz are open",
                how.join(" or ")
            )
        }
    }

    /// Whether a request for a protected endpoint may have it.
    pub fn check(&self, headers: &HeaderMap, caller: &Caller) -> Result<(), Denial> {
        if caller.verified_cert && self.client_certs() {
            return Ok(());
        }
        let Some(token) = &self.token else {
            if self.client_certs() {
                return Err(Denial::Missing);
            }
            return if self.listen.ip().is_loopback() {
                Ok(())
            } else {
                Err(Denial::NotHere)
            };
        };
        let given = headers
            .get(AUTHORIZATION)
            .and_then(|v| bearer(v.as_bytes()));
        match given {
            None => Err(Denial::Missing),
            Some(t) if token.matches(t) => Ok(()),
            Some(_) => Err(Denial::WrongToken),
        }
    }

    /// Counts a refusal and logs it, at most once per [`LOG_EVERY`]. Never logs what the
    /// caller sent.
    pub fn deny(&self, why: Denial, peer: SocketAddr, what: &str) {
        self.denied[why as usize].fetch_add(1, Ordering::Relaxed);
        let mut last = self
            .last_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if last.0.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            last.1 += 1;
            return;
        }
        let more = std::mem::take(&mut last.1);
        last.0 = Some(now);
        drop(last);
        let more = if more > 0 {
            format!(" ({more} more refusals since the last message)")
        } else {
            String::new()
        };
        log::warn!("API: refused {what} from {peer}: {}{more}", why.reason());
    }

    /// (reason, count) of every refusal since start, every reason present.
    pub fn denied(&self) -> Vec<(&'static str, u64)> {
        Denial::ALL
            .iter()
            .map(|d| (d.reason(), self.denied[*d as usize].load(Ordering::Relaxed)))
            .collect()
    }
}

/// The token of an `Authorization: Bearer TOKEN` header (the scheme in any case, RFC 7235).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// An error and its causes on one line.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    node_tracer_client::one_line(e)
}

#[cfg(test)]
mod tests;
