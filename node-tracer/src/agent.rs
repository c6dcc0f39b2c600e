//! `node-tracer run`: the agent. Attaches to every veth (see [`crate::node`]) and serves
//! `/metrics`, `/snapshot` (JSON) and `/healthz`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, signal::unix::SignalKind};

use crate::{
    error::{Error, Result},
    metrics,
    node::{Node, NodeOptions, State, lock},
};

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub listen: SocketAddr,
    pub node: NodeOptions,
}

/// Runs the agent until SIGINT or SIGTERM, then detaches everything it attached.
pub async fn run(opts: AgentOptions) -> Result<()> {
    // Bind first: a busy port must fail before anything is attached.
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|e| Error::io(format!("listen on {}", opts.listen), e))?;
    let node = Node::start(&opts.node).await?;
    {
        let s = lock(&node.state);
        log::info!(
            "attached to {} interfaces ({} mode); serving http://{}/metrics",
            s.probe.attached().count(),
            s.probe.mode().as_str(),
            opts.listen
        );
    }
    let server = tokio::spawn(serve(listener, node.state.clone()));
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())
        .map_err(|e| Error::io("install SIGTERM handler", e))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT: detaching"),
        _ = term.recv() => log::info!("SIGTERM: detaching"),
    }
    server.abort();
    node.stop();
    Ok(())
}

/// Largest request head we accept; anything bigger is refused by hyper with 431.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

async fn serve(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, state.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                // Slow clients cannot hold a connection open forever.
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(MAX_REQUEST_HEAD)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                log::debug!("http connection: {e}");
            }
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n",
        ));
    }
    let path = req.uri().path().to_string();
    // Reading maps is a few syscalls per port: do it off the async workers.
    let res = tokio::task::spawn_blocking(move || match path.as_str() {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/metrics" => {
            let mut s = lock(&state);
            let snap = s.snapshot();
            let health = s.health();
            drop(s);
            reply(
                StatusCode::OK,
                prometheus::TEXT_FORMAT,
                metrics::encode(&snap, &health),
            )
        }
        "/snapshot" => {
            let snap = lock(&state).snapshot();
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
            "node-tracer: /metrics (Prometheus), /snapshot (JSON), /healthz\n",
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

fn reply(status: StatusCode, ty: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = ty.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}
