//! Where `top` gets its snapshots: the local probe (wired by the CLI) or a running agent's
//! JSON at `URL/snapshot` over a minimal HTTP/1.1 client, so `--connect` needs no HTTP crate.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::model::Snapshot;

/// A supply of snapshots. `top` calls `next` once per interval from its own thread, on a
/// current-thread tokio runtime it owns; tasks `next` spawns live on that runtime.
pub trait SnapshotSource: Send + 'static {
    fn next(&mut self) -> impl Future<Output = Result<Snapshot, SourceError>>;
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("bad URL {url:?}: {why}")]
    Url { url: String, why: &'static str },
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("talking to {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("no answer from {addr} within {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("malformed HTTP response from {addr}: {why}")]
    Http { addr: String, why: &'static str },
    #[error("snapshot JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// For sources other than HTTP (the local probe) to carry their own error.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// Largest snapshot accepted (a node with thousands of veths is a few MB of JSON); a bound so a
/// wrong URL cannot make us buffer without end.
const MAX_RESPONSE: usize = 64 << 20;

/// Reads `URL/snapshot` from a running `node-tracer run`.
#[derive(Debug, Clone)]
pub struct HttpSource {
    /// `host:port` to connect to.
    addr: String,
    /// `Host` header value (the authority as given).
    host: String,
    /// Path of the snapshot, e.g. `/snapshot` or `/base/snapshot`.
    path: String,
    /// The URL's path, e.g. `` or `/base`: other endpoints go under it.
    base: String,
    url: String,
    pub timeout: Duration,
}

impl HttpSource {
    /// Accepts `http://host[:port][/base]`, or the same without the scheme; port 80 if absent.
    pub fn new(url: &str) -> Result<HttpSource, SourceError> {
        let bad = |why| SourceError::Url {
            url: url.to_owned(),
            why,
        };
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some(_) => return Err(bad("only http:// is supported")),
            None => url,
        };
        let (authority, base) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        // A port is present if the last ':' comes after any IPv6 literal's ']'.
        let has_port = authority
            .rfind(':')
            .is_some_and(|c| authority.rfind(']').is_none_or(|b| c > b));
        let addr = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let base = base.trim_end_matches('/').to_owned();
        let path = format!("{base}/snapshot");
        Ok(HttpSource {
            addr,
            host: authority.to_owned(),
            url: format!("http://{authority}{path}"),
            path,
            base,
            timeout: Duration::from_secs(5),
        })
    }

    /// Opens a streamed endpoint under the URL (`/trace/icmp`): connects, sends the request and
    /// reads the response head. Returns the connection and whatever of the body came with the
    /// head. HTTP/1.0, so the agent sends the body as is until it closes the connection, rather
    /// than in chunks.
    pub async fn open_stream(&self, endpoint: &str) -> Result<(TcpStream, Vec<u8>), SourceError> {
        let req = format!(
            "GET {}{endpoint} HTTP/1.0\r\nHost: {}\r\nUser-Agent: node-tracer\r\n\r\n",
            self.base, self.host
        );
        let opened = async {
            let mut s = self.send(&req).await?;
            let mut head = Vec::new();
            loop {
                if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    return Ok((s, head, i + 4));
                }
                if head.len() > 64 << 10 {
                    return Err(self.http("response head too large"));
                }
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.map_err(|e| self.io(e))?;
                if n == 0 {
                    return Err(self.http("connection closed before the response head"));
                }
                head.extend_from_slice(&chunk[..n]);
            }
        };
        let (s, head, end) = tokio::time::timeout(self.timeout, opened)
            .await
            .map_err(|_| SourceError::Timeout {
                addr: self.addr.clone(),
                after: self.timeout,
            })??;
        let (status, _) = parse_response(&head[..end]).map_err(|why| self.http(why))?;
        if status != 200 {
            let url = format!("http://{}{}{endpoint}", self.host, self.base);
            return Err(SourceError::Status { url, status });
        }
        Ok((s, head[end..].to_vec()))
    }

    /// Connects and sends the request `req`.
    async fn send(&self, req: &str) -> Result<TcpStream, SourceError> {
        let mut s = TcpStream::connect(self.addr.as_str())
            .await
            .map_err(|source| SourceError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        s.write_all(req.as_bytes()).await.map_err(|e| self.io(e))?;
        Ok(s)
    }

    fn io(&self, source: std::io::Error) -> SourceError {
        SourceError::Io {
            addr: self.addr.clone(),
            source,
        }
    }

    fn http(&self, why: &'static str) -> SourceError {
        SourceError::Http {
            addr: self.addr.clone(),
            why,
        }
    }

    /// The full URL fetched, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn fetch(&self) -> Result<Vec<u8>, SourceError> {
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: node-tracer-top\r\nConnection: close\r\n\r\n",
            self.path, self.host
        );
        let mut s = self.send(&req).await?;
        let mut buf = Vec::new();
        (&mut s)
            .take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| self.io(e))?;
        if buf.len() > MAX_RESPONSE {
            return Err(self.http("response too large"));
        }
        parse_response(&buf)
            .map_err(|why| self.http(why))
            .and_then(|(status, body)| {
                if status == 200 {
                    Ok(body)
                } else {
                    Err(SourceError::Status {
                        url: self.url.clone(),
                        status,
                    })
                }
            })
    }
}

impl SnapshotSource for HttpSource {
    async fn next(&mut self) -> Result<Snapshot, SourceError> {
        let body = tokio::time::timeout(self.timeout, self.fetch())
            .await
            .map_err(|_| SourceError::Timeout {
                addr: self.addr.clone(),
                after: self.timeout,
            })??;
        Ok(serde_json::from_slice(&body)?)
    }
}

/// Splits an HTTP/1.x response into status and body, undoing chunked transfer coding (a
/// server streaming its JSON may use it even with `Connection: close`).
pub fn parse_response(buf: &[u8]) -> Result<(u16, Vec<u8>), &'static str> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "headers are not UTF-8")?;
    let body = &buf[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty response")?;
    let mut parts = status_line.split(' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err("not an HTTP/1 response");
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or("bad status line")?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        } else if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().map_err(|_| "bad content-length")?);
        }
    }
    if chunked {
        return dechunk(body).map(|b| (status, b));
    }
    match length {
        Some(n) if n > body.len() => Err("body shorter than content-length"),
        Some(n) => Ok((status, body[..n].to_vec())),
        None => Ok((status, body.to_vec())),
    }
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(b.len());
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_line = std::str::from_utf8(&b[..eol]).map_err(|_| "bad chunk size")?;
        let hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| "bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunk");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let s = HttpSource::new("http://127.0.0.1:9100").unwrap();
        assert_eq!(
            (s.addr.as_str(), s.path.as_str()),
            ("127.0.0.1:9100", "/snapshot")
        );
        let s = HttpSource::new("node1:9100/agent/").unwrap();
        assert_eq!(
            (s.addr.as_str(), s.path.as_str()),
            ("node1:9100", "/agent/snapshot")
        );
        assert_eq!(s.url(), "http://node1:9100/agent/snapshot");
        let s = HttpSource::new("http://[::1]").unwrap();
        assert_eq!(s.addr, "[::1]:80");
        let s = HttpSource::new("http://[::1]:9100").unwrap();
        assert_eq!(s.addr, "[::1]:9100");
        assert!(HttpSource::new("https://x").is_err());
        assert!(HttpSource::new("http:///snapshot").is_err());
    }

    #[test]
    fn parses_plain_and_chunked_bodies() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}trailing";
        assert_eq!(parse_response(r).unwrap(), (200, b"{}".to_vec()));
        let r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(r).unwrap(), (200, b"{\"a\":1}".to_vec()));
        let r = b"HTTP/1.0 404 Not Found\r\n\r\nnope";
        assert_eq!(parse_response(r).unwrap().0, 404);
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}").is_err());
    }

    #[tokio::test]
    async fn fetches_a_snapshot_over_tcp() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let snap = Snapshot {
            taken_at_ms: 42,
            ..Snapshot::default()
        };
        let body = serde_json::to_vec(&snap).unwrap();
        let server = tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut req = vec![0u8; 1024];
            let n = c.read(&mut req).await.unwrap();
            let req = String::from_utf8_lossy(&req[..n]).into_owned();
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            c.write_all(head.as_bytes()).await.unwrap();
            c.write_all(&body).await.unwrap();
            req
        });
        let mut src = HttpSource::new(&format!("http://{addr}")).unwrap();
        assert_eq!(src.next().await.unwrap(), snap);
        assert!(
            server
                .await
                .unwrap()
                .starts_with("GET /snapshot HTTP/1.1\r\n")
        );
    }

    #[tokio::test]
    async fn refused_connection_is_an_error_not_a_hang() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let mut src = HttpSource::new(&format!("{addr}")).unwrap();
        assert!(matches!(src.next().await, Err(SourceError::Connect { .. })));
    }
}
