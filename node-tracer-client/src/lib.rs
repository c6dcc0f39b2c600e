//! The one client of a node-tracer agent's HTTP API: `top`, `trace icmp` and `macs` with
//! `--connect`, the integration tests and the bench all talk to agents through [`Agent`].
//!
//! HTTP/1.1 on hyper, over plain TCP, a unix socket (`unix:/path`: also how the Docker
//! Engine's API is read) or TLS (rustls; the agent's CA from `--tls-ca`, a client
//! certificate from `--tls-cert`/`--tls-key`), with a bearer token read from a file
//! (`--api-token-file`). The token is never printed: not in `Debug`, not in an error.

mod pem;
mod token;
mod url;

use std::{
    error::Error as StdError,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{
    Request, Response, StatusCode,
    body::Incoming,
    header::{AUTHORIZATION, HOST, HeaderValue, USER_AGENT},
};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpStream, UnixStream},
};
use tokio_rustls::TlsConnector;

pub use pem::{PemError, certs, key, provider, roots};
pub use token::{TokenFileError, read_token_file};
pub use url::AgentUrl;

/// What a client proves itself with. Every field is a path: secrets live in files, never on a
/// command line.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// A file holding the agent's bearer token (surrounding whitespace ignored).
    pub token_file: Option<PathBuf>,
    /// The CA that signed the agent's certificate (for `https://`).
    pub ca: Option<PathBuf>,
    /// A client certificate and its key, for an agent that asks for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad agent URL {url:?}: {why}")]
    Url { url: String, why: &'static str },
    #[error("{url} is https: give the CA that signed the agent's certificate (--tls-ca)")]
    NoCa { url: String },
    #[error("--tls-cert and --tls-key go together")]
    HalfClientCert,
    #[error("reading the API token file {}", path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the API token file {} holds no token", path.display())]
    EmptyToken { path: PathBuf },
    #[error("the API token file {} holds characters an HTTP header cannot carry", path.display())]
    BadToken { path: PathBuf },
    #[error("TLS credentials")]
    Pem(#[from] PemError),
    #[error("TLS client configuration")]
    Tls(#[source] rustls::Error),
    #[error("nothing answers at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS handshake with {addr}")]
    Handshake {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent at {url} refused the TLS connection: {alert}")]
    TlsRefused { url: String, alert: String },
    #[error("talking to {url}")]
    Http {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("no answer from {url} within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("the agent at {url} refused: {why} (HTTP {status})")]
    Refused {
        url: String,
        status: u16,
        why: String,
    },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("the answer from {url} is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
}

impl ClientError {
    /// Whether the agent answered and said no (as opposed to not answering at all).
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused { .. } | Self::TlsRefused { .. })
    }
}

/// An error and its causes on one line (`a: b: c`), for views that show errors as text.
pub fn one_line(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        // Some errors repeat their source's text in their own; say it once.
        if !out.ends_with(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}

/// Largest body [`Agent::get`] accepts (a snapshot of thousands of veths is a few MB): a bound,
/// so a wrong URL cannot make us buffer without end.
pub const MAX_BODY: usize = 64 << 20;

/// The `Authorization` header, made once from the token file and marked sensitive (kept out
/// of hyper's debug logs); kept out of `Debug` and every message.
#[derive(Clone)]
struct Token(HeaderValue);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// One agent: where it is and how to prove who we are to it.
#[derive(Clone)]
pub struct Agent {
    url: AgentUrl,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    token: Option<Token>,
    /// Bounds connecting, the TLS handshake and the response head (and, for [`Agent::get`],
    /// the whole body).
    pub timeout: Duration,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl Agent {
    /// An agent at `url` (see [`AgentUrl`]), with `creds` read now.
    pub fn new(url: &str, creds: &Credentials) -> Result<Self, ClientError> {
        let parsed = AgentUrl::parse(url).map_err(|why| ClientError::Url {
            url: url.to_owned(),
            why,
        })?;
        let token = creds.token_file.as_deref().map(read_token).transpose()?;
        let tls = if parsed.tls {
            let Some(ca) = &creds.ca else {
                return Err(ClientError::NoCa {
                    url: parsed.show(""),
                });
            };
            let name = ServerName::try_from(parsed.host.clone()).map_err(|_| ClientError::Url {
                url: url.to_owned(),
                why: "the host is not a valid TLS server name",
            })?;
            Some((TlsConnector::from(client_config(ca, creds)?), name))
        } else {
            None
        };
        Ok(Self {
            url: parsed,
            tls,
            token,
            timeout: Duration::from_secs(5),
        })
    }

    /// A plain-HTTP agent with no credentials (tests, the bench).
    pub fn plain(addr: std::net::SocketAddr) -> Self {
        Self::new(&format!("http://{addr}"), &Credentials::default())
            .expect("a socket address is a valid URL")
    }

    /// The same agent URL, credentials and TLS server name, but reached at `addr`: one of the
    /// addresses a DNS name gave (a headless Service's). Messages and the `Host` header name
    /// the address, so a warning says which of the agents it is about.
    #[must_use]
    pub fn at(&self, addr: std::net::SocketAddr) -> Self {
        let mut a = self.clone();
        a.url.addr = addr.to_string();
        a.url.authority = addr.to_string();
        a
    }

    /// The URL's host as given (a DNS name, an IP address, or `localhost` for a unix socket)
    /// and its port (`None` for a unix socket).
    pub fn host_port(&self) -> (&str, Option<u16>) {
        if self.url.unix.is_some() {
            return (&self.url.host, None);
        }
        let port = self
            .url
            .addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok());
        (&self.url.host, port)
    }

    /// The full URL of `path` on this agent, for messages.
    pub fn url(&self, path: &str) -> String {
        self.url.show(path)
    }

    /// `GET path`: the body of a 200 answer, all of it (at most [`MAX_BODY`]), within
    /// [`Agent::timeout`].
    pub async fn get(&self, path: &str) -> Result<Bytes, ClientError> {
        let (status, body) = self.fetch(path).await?;
        match status {
            200 => Ok(body),
            401 | 403 => Err(ClientError::Refused {
                url: self.url(path),
                status,
                why: first_line(&body),
            }),
            _ => Err(ClientError::Status {
                url: self.url(path),
                status,
            }),
        }
    }

    /// `GET path` whatever its status: (status, body), within [`Agent::timeout`].
    pub async fn fetch(&self, path: &str) -> Result<(u16, Bytes), ClientError> {
        let url = self.url(path);
        let got = async {
            let resp = self.request(path).await?;
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| match e.downcast::<hyper::Error>() {
                    Ok(source) => self.http_error(path, *source),
                    Err(_) => ClientError::TooLarge {
                        url: url.clone(),
                        limit: MAX_BODY,
                    },
                })?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, got)
            .await
            .map_err(|_| ClientError::Timeout {
                url,
                after: self.timeout,
            })?
    }

    /// `GET path` of a streamed endpoint (`/trace/icmp`): the response head within
    /// [`Agent::timeout`], then the body as it comes, for as long as the agent sends it.
    pub async fn stream(&self, path: &str) -> Result<Stream, ClientError> {
        let resp = tokio::time::timeout(self.timeout, self.request(path))
            .await
            .map_err(|_| ClientError::Timeout {
                url: self.url(path),
                after: self.timeout,
            })??;
        let status = resp.status();
        if status == StatusCode::OK {
            return Ok(Stream {
                body: resp.into_body(),
                url: self.url(path),
            });
        }
        let url = self.url(path);
        let status = status.as_u16();
        if matches!(status, 401 | 403) {
            // A refusal's body is one short line: read it, briefly.
            let body =
                tokio::time::timeout(self.timeout, Limited::new(resp.into_body(), 4096).collect())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(http_body_util::Collected::to_bytes)
                    .unwrap_or_default();
            return Err(ClientError::Refused {
                url,
                status,
                why: first_line(&body),
            });
        }
        Err(ClientError::Status { url, status })
    }

    async fn connect(&self) -> Result<Box<dyn Io>, ClientError> {
        let addr = &self.url.addr;
        if let Some(socket) = &self.url.unix {
            // `parse` never gives a unix URL TLS: a local socket is guarded by its file mode.
            let s = UnixStream::connect(socket)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: addr.clone(),
                    source,
                })?;
            return Ok(Box::new(s));
        }
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?;
        // Requests are one small write each; don't let Nagle hold them.
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((connector, name)) => match connector.connect(name.clone(), tcp).await {
                Ok(s) => Ok(Box::new(s)),
                Err(source) => Err(match alert(&source) {
                    Some(alert) => ClientError::TlsRefused {
                        url: self.url(""),
                        alert,
                    },
                    None => ClientError::Handshake {
                        addr: addr.clone(),
                        source,
                    },
                }),
            },
        }
    }

    async fn request(&self, path: &str) -> Result<Response<Incoming>, ClientError> {
        let io = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.http_error(path, e))?;
        // Drives the connection until the response body is read or dropped.
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log::debug!("agent connection: {e}");
            }
        });
        let mut req = Request::get(format!("{}{path}", self.url.base))
            .header(HOST, &self.url.authority)
            .header(
                USER_AGENT,
                concat!("node-tracer/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(Token(header)) = &self.token {
            req = req.header(AUTHORIZATION, header.clone());
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|_| ClientError::Url {
                url: self.url(path),
                why: "not a valid request path",
            })?;
        sender
            .send_request(req)
            .await
            .map_err(|e| self.http_error(path, e))
    }

    /// A hyper error; one that is the agent's TLS alert (TLS 1.3 sends a client certificate's
    /// refusal after the handshake, so it arrives with the first read) says so plainly.
    fn http_error(&self, path: &str, source: hyper::Error) -> ClientError {
        let mut cur: Option<&(dyn StdError + 'static)> = source.source();
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && let Some(alert) = alert(io)
            {
                return ClientError::TlsRefused {
                    url: self.url(""),
                    alert,
                };
            }
            cur = e.source();
        }
        ClientError::Http {
            url: self.url(path),
            source,
        }
    }
}

/// The TLS alert the agent sent, if that is what `e` is.
fn alert(e: &std::io::Error) -> Option<String> {
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    match inner {
        rustls::Error::AlertReceived(a) => Some(format!("{a:?}")),
        _ => None,
    }
}

/// A streamed body, read chunk by chunk.
pub struct Stream {
    body: Incoming,
    url: String,
}

impl Stream {
    /// The next bytes, or `None` at the end. Cancel-safe: a call dropped before it completes
    /// has taken nothing.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(source)) => {
                    return Err(ClientError::Http {
                        url: self.url.clone(),
                        source,
                    });
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                    // Trailers: nothing of ours.
                }
            }
        }
    }
}

fn read_token(path: &Path) -> Result<Token, ClientError> {
    let token = read_token_file(path).map_err(|e| match e {
        TokenFileError::Read { path, source } => ClientError::TokenFile { path, source },
        TokenFileError::Empty { path } => ClientError::EmptyToken { path },
    })?;
    let mut header =
        HeaderValue::from_bytes(&[b"Bearer ".as_slice(), &token].concat()).map_err(|_| {
            ClientError::BadToken {
                path: path.to_owned(),
            }
        })?;
    header.set_sensitive(true);
    Ok(Token(header))
}

fn client_config(ca: &Path, creds: &Credentials) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(ClientError::Tls)?
        .with_root_certificates(roots(ca)?);
    let config = match (&creds.cert, &creds.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(certs(cert)?, pem::key(key)?)
            .map_err(ClientError::Tls)?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(ClientError::HalfClientCert),
    };
    Ok(Arc::new(config))
}

fn first_line(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        "no reason given".into()
    } else {
        line.chars().take(200).collect()
    }
}

/// The same calls for code without a runtime of its own (tests, the bench): each runs on a
/// current-thread runtime made for it, on the calling thread (so in that thread's network
/// namespace).
pub mod blocking {
    use super::{Agent, Bytes, ClientError};

    /// [`Agent::fetch`]: (status, body) whatever the status.
    pub fn fetch(agent: &Agent, path: &str) -> Result<(u16, Bytes), ClientError> {
        runtime().block_on(agent.fetch(path))
    }

    /// [`Agent::get`]: the body of a 200.
    pub fn get(agent: &Agent, path: &str) -> Result<Bytes, ClientError> {
        runtime().block_on(agent.get(path))
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime needs only memory")
    }
}

#[cfg(test)]
mod tests;
