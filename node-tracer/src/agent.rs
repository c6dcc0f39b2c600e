//! `node-tracer run`: the agent. Attaches to every veth (see [`crate::node`]) and serves
//! `/metrics`, `/snapshot` (JSON), `/healthz`, and `/trace/icmp` (the stream
//! `trace icmp --connect` reads, see [`crate::trace::wire`]); who may read which is
//! [`crate::api`]'s to say.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::{
    api::{Access, ApiOptions, Caller, Denial},
    error::{Error, Result},
    metrics,
    node::{Node, NodeOptions, Shared, lock},
    shutdown,
    trace::{self, Hub},
};

type Body = BoxBody<Bytes, Infallible>;

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub listen: SocketAddr,
    pub node: NodeOptions,
    pub api: ApiOptions,
}

/// Runs the agent until SIGINT or SIGTERM, then detaches everything it attached.
pub async fn run(opts: AgentOptions) -> Result<()> {
    // Bind first: a busy port must fail before anything is attached.
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|e| Error::io(format!("listen on {}", opts.listen), e))?;
    // The port the kernel picked, for `--listen host:0`.
    let listening = listener.local_addr().unwrap_or(opts.listen);
    // Credentials are read before anything is attached, too: a missing token file or a bad
    // certificate is a refusal to start, not a surprise at the first request.
    let access = Arc::new(Access::new(&opts.api, listening)?);
    crate::pods::netns::warn_if_not_propagated(&opts.node.pods.netns_dir);
    // Serving starts before the first attach pass: a scrape during it (half a minute at 1,000
    // veths) gets what is counted so far, and /healthz answers 503 with its progress.
    let mut tasks = Vec::new();
    let node = Node::start_with(&opts.node, |state| {
        // One reader of the programs' event ring for every `trace icmp --connect`.
        let ring = lock(state).probe.take_events()?;
        let hub = Arc::new(Hub::default());
        tasks.push(tokio::spawn(hub.clone().run(
            trace::RingBufSource::new(ring, Box::new(|| 0))?,
            state.clone(),
        )));
        tasks.push(tokio::spawn(serve(
            listener,
            state.clone(),
            hub,
            access.clone(),
        )));
        log::info!("serving http://{listening}/metrics; attaching");
        log::info!("API: {}", access.describe());
        Ok(())
    })
    .await;
    let stop = |node: Option<Node>| {
        for t in &tasks {
            t.abort();
        }
        if let Some(node) = node {
            // Per-packet events exist only while someone traces (detaching next ends them anyway,
            // so a failure here is only worth a line).
            if let Err(e) = lock(&node.state).probe.set_tracing(false) {
                log::warn!(
                    "turning trace events off: {}",
                    node_tracer_client::one_line(&e)
                );
            }
            node.stop();
        }
    };
    let node = match node {
        Ok(n) => n,
        Err(e) => {
            stop(None);
            return Err(e);
        }
    };
    if let Some(signal) = shutdown::received() {
        log::info!("{signal} during start-up: detaching");
        stop(Some(node));
        return Ok(());
    }
    {
        let s = lock(&node.state);
        log::info!(
            "attached to {} interfaces ({} mode)",
            s.probe.attached().count(),
            s.probe.mode().as_str(),
        );
    }
    let waited = shutdown::wait().await;
    if let Ok(signal) = waited {
        log::info!("{signal}: detaching");
    }
    // Also when waiting failed: nothing stays attached behind an error.
    stop(Some(node));
    waited
        .map(drop)
        .map_err(|e| Error::io("wait for a stop signal", e))
}

/// Largest request head we accept; anything bigger is refused by hyper with 431.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// How long a connection may stay silent before its first byte (TLS or HTTP) or its request
/// head: slow clients cannot hold a connection open forever.
const FIRST_BYTES: Duration = Duration::from_secs(10);

async fn serve(listener: TcpListener, state: Arc<Shared>, hub: Arc<Hub>, access: Arc<Access>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                crate::failures::count("accept");
                log::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (state, hub, access) = (state.clone(), hub.clone(), access.clone());
        tokio::spawn(async move {
            let plain = Caller {
                peer,
                verified_cert: false,
            };
            let Some(tls) = access.tls() else {
                return serve_connection(stream, plain, state, hub, access).await;
            };
            // One port for both: probes and Prometheus speak plain HTTP to /metrics and
            // /healthz, API clients TLS. A TLS connection starts with a handshake record.
            if !starts_with_tls(&stream).await {
                return serve_connection(stream, plain, state, hub, access).await;
            }
            let accepted = tokio::time::timeout(FIRST_BYTES, tls.acceptor().accept(stream)).await;
            match accepted {
                Ok(Ok(tls_stream)) => {
                    let caller = Caller {
                        peer,
                        verified_cert: tls_stream.get_ref().1.peer_certificates().is_some(),
                    };
                    serve_connection(tls_stream, caller, state, hub, access).await;
                }
                Ok(Err(e)) => {
                    log::debug!("TLS handshake with {peer}: {e}");
                    access.deny(Denial::TlsHandshake, peer, "a TLS connection");
                }
                Err(_) => log::debug!("TLS handshake with {peer}: timed out"),
            }
        });
    }
}

/// Whether the first byte the client sent is a TLS handshake record's (22). Waits at most
/// [`FIRST_BYTES`]; a client that sends nothing is served as plain HTTP, whose own header
/// timeout then closes it.
async fn starts_with_tls(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(FIRST_BYTES, stream.peek(&mut first)).await,
        Ok(Ok(1))
    ) && first[0] == 22
}

async fn serve_connection<S>(
    stream: S,
    caller: Caller,
    state: Arc<Shared>,
    hub: Arc<Hub>,
    access: Arc<Access>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc =
        service_fn(move |req| handle(req, caller, state.clone(), hub.clone(), access.clone()));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(FIRST_BYTES)
        .max_buf_size(MAX_REQUEST_HEAD)
        .serve_connection(TokioIo::new(stream), svc);
    if let Err(e) = conn.await {
        log::debug!("http connection: {e}");
    }
}

async fn handle(
    req: Request<Incoming>,
    caller: Caller,
    state: Arc<Shared>,
    hub: Arc<Hub>,
    access: Arc<Access>,
) -> std::result::Result<Response<Body>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n",
        ));
    }
    let path = req.uri().path().to_string();
    if crate::api::PROTECTED.contains(&path.as_str())
        && let Err(why) = access.check(req.headers(), &caller)
    {
        access.deny(why, caller.peer, &format!("{} {path}", req.method()));
        let (status, line) = why.answer();
        let mut r = reply(status, "text/plain", line);
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer realm=\"node-tracer\""),
            );
        }
        return Ok(r);
    }
    if path == "/trace/icmp" {
        return Ok(trace_stream(&hub));
    }
    // Reading maps is a few syscalls per port: do it off the async workers.
    let res = tokio::task::spawn_blocking(move || match path.as_str() {
        "/healthz" => match state.read.starting() {
            // Not ready (a readiness or startup probe waits), but alive and serving.
            Some(p) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("starting: {} of {} veths attached\n", p.done, p.total),
            ),
            None => reply(StatusCode::OK, "text/plain", "ok\n"),
        },
        "/metrics" => {
            let (snap, mut health) = state.read.metrics();
            health.trace_streams = hub.streams() as u64;
            health.api_denied = access.denied();
            reply(
                StatusCode::OK,
                prometheus::TEXT_FORMAT,
                metrics::encode(&snap, &health),
            )
        }
        "/snapshot" => {
            let snap = state.read.snapshot();
            match serde_json::to_vec(&snap) {
                Ok(body) => reply(StatusCode::OK, "application/json", body),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e}\n"),
                ),
            }
        }
        "/" => reply(
            StatusCode::OK,
            "text/plain",
            "node-tracer: /metrics (Prometheus), /snapshot (JSON), /healthz, /trace/icmp \
             (read by `node-tracer trace icmp --connect`)\n",
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    })
    .await
    .unwrap_or_else(|_| {
        reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "internal error\n",
        )
    });
    Ok(res)
}

/// `GET /trace/icmp`: every traced packet from now on, one line each, with a heartbeat line
/// every second (so a client that went away is noticed even while nothing is traced). The
/// stream lasts until the client closes it.
fn trace_stream(hub: &Arc<Hub>) -> Response<Body> {
    let sub = hub.subscribe();
    let lines = futures::stream::unfold(
        (sub, tokio::time::interval(trace::TICK)),
        |(mut sub, mut tick)| async move {
            let line = tokio::select! {
                ev = sub.recv() => trace::wire::event_line(&ev?, sub.lost()),
                _ = tick.tick() => trace::wire::heartbeat_line(sub.lost()),
            };
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(line))),
                (sub, tick),
            ))
        },
    );
    let mut r = Response::new(StreamBody::new(lines).boxed());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

fn reply(status: StatusCode, ty: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    if let Ok(v) = ty.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}
