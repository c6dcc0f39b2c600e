//! `node-tracer run`: attach to every veth, follow veth churn from netlink events, and serve
//! `/metrics`, `/snapshot` (JSON) and `/healthz`.

use std::{
    collections::HashSet,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{io::unix::AsyncFd, net::TcpListener, signal::unix::SignalKind, sync::Notify};

use crate::{
    error::{Error, Result},
    metrics::{self, Health},
    model::Snapshot,
    pods::{self, PodConfig, PodIndex},
    probe::{Probe, ProbeOptions},
    snapshot,
    topology::{self, LinkEvent, ScanOptions, Topology},
};

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub listen: SocketAddr,
    /// Attach only to these interfaces (any kind); empty: every veth, following churn.
    pub interfaces: Vec<String>,
    pub probe: ProbeOptions,
    pub pods: PodConfig,
    pub scan: ScanOptions,
}

/// Shared state: the probe (maps and attachments) and the latest topology and pods.
pub struct State {
    pub probe: Probe,
    pub topology: Topology,
    pub pods: PodIndex,
    pub health: Health,
    /// Interfaces the user named with --interface (empty: all veths).
    pub only: HashSet<String>,
}

impl State {
    /// Reads the maps and joins everything into a snapshot.
    pub fn snapshot(&mut self) -> Snapshot {
        let readings = match self.probe.read() {
            Ok(r) => r,
            Err(e) => {
                log::warn!("reading counters: {e}");
                std::collections::HashMap::default()
            }
        };
        let probe = &self.probe;
        let mut snap = snapshot::build(&self.topology, &self.pods, &readings, |i| {
            probe.is_attached(i)
        });
        if !self.only.is_empty() {
            snap.ports.retain(|p| self.only.contains(&p.name));
        }
        snap
    }

    pub fn health(&mut self) -> Health {
        self.health.mode = self.probe.mode().as_str();
        self.health.attached = self.probe.attached().count();
        if let Ok(s) = self.probe.program_stats() {
            self.health.program_stats = s;
        }
        self.health.program_runs = self.probe.program_run_stats();
        self.health.clone()
    }

    /// Makes attachments match the topology: attach new veths, detach vanished ones.
    fn reconcile(&mut self) {
        let wanted: Vec<(u32, String)> = if self.only.is_empty() {
            self.topology
                .ports
                .iter()
                .map(|p| (p.ifindex, p.name.clone()))
                .collect()
        } else {
            self.only
                .iter()
                .filter_map(|n| ifindex_of(n).map(|i| (i, n.clone())))
                .collect()
        };
        let keep: HashSet<u32> = wanted.iter().map(|(i, _)| *i).collect();
        let gone: Vec<u32> = self
            .probe
            .attached()
            .map(|(i, _)| i)
            .filter(|i| !keep.contains(i))
            .collect();
        for i in gone {
            self.probe.detach(i);
        }
        for (i, name) in wanted {
            if let Err(e) = self.probe.attach(i, &name) {
                self.health.attach_errors += 1;
                // A veth deleted between the event and the attach is not worth a warning.
                if ifindex_of(&name) == Some(i) {
                    log::warn!("{e}");
                } else {
                    log::debug!("{e}");
                }
            }
        }
        self.probe.collect_garbage();
    }
}

fn ifindex_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Runs the agent until SIGINT or SIGTERM, then detaches everything it attached.
pub async fn run(opts: AgentOptions) -> Result<()> {
    // Bind first: a busy port must fail before anything is attached.
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|e| Error::io(format!("listen on {}", opts.listen), e))?;
    for name in &opts.interfaces {
        if ifindex_of(name).is_none() {
            return Err(Error::NoSuchInterface(name.clone()));
        }
    }
    let mut probe = Probe::load(&opts.probe)?;
    let logger = probe.take_logger();
    let watcher = if opts.interfaces.is_empty() {
        Some(topology::watch().map_err(|e| Error::Netlink(e.to_string()))?)
    } else {
        None
    };
    let topology = topology::scan(&opts.scan)
        .await
        .map_err(|e| Error::Netlink(e.to_string()))?;
    let pods = pods::discover(&opts.pods).await;
    let state = Arc::new(Mutex::new(State {
        probe,
        topology,
        pods,
        health: Health::default(),
        only: opts.interfaces.iter().cloned().collect(),
    }));
    {
        let mut s = lock(&state);
        s.reconcile();
        log::info!(
            "attached to {} interfaces ({} mode); serving http://{}/metrics",
            s.probe.attached().count(),
            s.probe.mode().as_str(),
            opts.listen
        );
    }

    let relabel = Arc::new(Notify::new());
    let server = tokio::spawn(serve(listener, state.clone()));
    let labeller = tokio::spawn(relabel_loop(state.clone(), relabel.clone(), opts.clone()));
    let logs = logger.map(|l| tokio::spawn(forward_logs(l)));
    let events = watcher.map(|w| tokio::spawn(follow_links(w, state.clone(), relabel.clone())));

    let mut term = tokio::signal::unix::signal(SignalKind::terminate())
        .map_err(|e| Error::io("install SIGTERM handler", e))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => log::info!("SIGINT: detaching"),
        _ = term.recv() => log::info!("SIGTERM: detaching"),
    }
    server.abort();
    labeller.abort();
    if let Some(t) = events {
        t.abort();
    }
    if let Some(t) = logs {
        t.abort();
    }
    lock(&state).probe.detach_all();
    Ok(())
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock leaves the data usable: counters are read fresh each time.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Attaches and detaches as veths come and go; every change also schedules a relabel.
async fn follow_links(
    mut watcher: topology::LinkWatcher,
    state: Arc<Mutex<State>>,
    relabel: Arc<Notify>,
) {
    while let Some(ev) = watcher.next().await {
        let mut s = lock(&state);
        s.health.link_events += 1;
        match ev {
            LinkEvent::Added { ifindex, name } => {
                // Attach at once: counting must not wait for the (slower) pod lookup.
                if let Err(e) = s.probe.attach(ifindex, &name) {
                    s.health.attach_errors += 1;
                    log::debug!("{e}");
                } else {
                    log::debug!("attached to new veth {name} ({ifindex})");
                }
            }
            LinkEvent::Removed { ifindex, name } => {
                s.probe.detach(ifindex);
                s.topology.ports.retain(|p| p.ifindex != ifindex);
                log::debug!("veth {name} ({ifindex}) removed");
            }
            LinkEvent::Resync => {
                s.health.netlink_resyncs += 1;
                log::warn!("netlink socket overran; rescanning all links");
            }
        }
        drop(s);
        relabel.notify_one();
    }
}

/// Rescans topology and pods after link changes (debounced), and retries a few times for veths
/// whose pod is not known yet: CNI creates the veth before the runtime records the pod.
async fn relabel_loop(state: Arc<Mutex<State>>, relabel: Arc<Notify>, opts: AgentOptions) {
    const RETRIES: [u64; 4] = [250, 1000, 3000, 10_000];
    let mut retry = 0usize;
    loop {
        let wait = if retry < RETRIES.len() {
            Duration::from_millis(RETRIES[retry])
        } else {
            Duration::from_hours(1)
        };
        tokio::select! {
            () = relabel.notified() => { retry = 0; tokio::time::sleep(Duration::from_millis(50)).await; }
            () = tokio::time::sleep(wait) => {
                if retry >= RETRIES.len() { continue; }
                retry += 1;
            }
        }
        let pods = pods::discover(&opts.pods).await;
        let mut scan = opts.scan.clone();
        scan.extra_netns_paths.extend(pods.netns_paths());
        let topology = match topology::scan(&scan).await {
            Ok(t) => t,
            Err(e) => {
                log::warn!("rescan: {e}");
                continue;
            }
        };
        let unlabelled = topology.ports.iter().any(|p| {
            p.peer
                .as_ref()
                .and_then(|x| x.netns_inode)
                .is_some_and(|i| pods.lookup(i).is_none())
        });
        let mut s = lock(&state);
        s.topology = topology;
        s.pods = pods;
        s.reconcile();
        if !unlabelled {
            retry = RETRIES.len();
        }
    }
}

async fn forward_logs(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer fd and keeps it open for as long as it lives,
    // which is as long as the AsyncFd that owns the logger.
    let Ok(mut fd) =
        (unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) })
    else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
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
            match metrics::encode(&snap, &health) {
                Ok(body) => reply(StatusCode::OK, prometheus::TEXT_FORMAT, body),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e}\n"),
                ),
            }
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
