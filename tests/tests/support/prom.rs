//! A real Prometheus server (Debian's `prometheus`) scraping one agent every second, stopped by
//! its PID on drop; and its HTTP query API.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use node_tracer_tests::{TempDir, free_port, http_get, require_tool, stop_child};

/// `deploy/` of this repository.
pub fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    /// Config and TSDB; removed after the server is gone (fields drop after `drop`).
    pub dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second, with the shipped rules loaded, and
    /// waits until it is ready.
    pub fn start(target: SocketAddr) -> Self {
        require_tool("prometheus");
        let dir = TempDir::new("prom");
        let rules = deploy_dir().join("prometheus/rules.yaml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: node-tracer\n    honor_labels: true\n    \
             static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        );
        let config_path = dir.0.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::fs::File::create(dir.0.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let mut p = Self { child, addr, dir };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited ({status}): {}", p.log());
            }
            if matches!(http_get(addr, "/-/ready"), Ok((200, _))) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_mins(1),
                "prometheus not ready: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: the `data.result` array.
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) =
            http_get(self.addr, &path).unwrap_or_else(|e| panic!("query {promql}: {e}"));
        assert_eq!(status, 200, "query {promql}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("query JSON");
        assert_eq!(v["status"], "success", "{body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The value of each series of an instant query, keyed by `label`.
    pub fn values_by(&self, promql: &str, label: &str) -> Vec<(String, f64)> {
        self.query(promql)
            .iter()
            .map(|s| {
                let key = s["metric"][label].as_str().unwrap_or_default().to_string();
                let v = s["value"][1]
                    .as_str()
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(f64::NAN);
                (key, v)
            })
            .collect()
    }

    /// Scrape health of every target, for failure messages.
    pub fn targets(&self) -> String {
        match http_get(self.addr, "/api/v1/targets") {
            Ok((_, body)) => serde_json::from_str::<serde_json::Value>(&body)
                .map(|v| {
                    v["data"]["activeTargets"]
                        .as_array()
                        .map(|t| {
                            t.iter()
                                .map(|t| {
                                    format!(
                                        "{} {} {:?} {}",
                                        t["scrapeUrl"],
                                        t["health"],
                                        t["lastError"],
                                        t["lastScrape"]
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join("; ")
                        })
                        .unwrap_or_default()
                })
                .unwrap_or(body),
            Err(e) => e.to_string(),
        }
    }

    /// Every rule group the server loaded, with its health.
    pub fn rules(&self) -> serde_json::Value {
        let (status, body) = http_get(self.addr, "/api/v1/rules").expect("rules");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("rules JSON")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(10));
    }
}

/// RFC 3986 percent-encoding of everything but unreserved characters (PromQL is full of `{`,
/// `"`, `=`, spaces; label values may hold anything).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A PromQL string literal holding exactly `s` (double-quoted, Go escapes).
pub fn promql_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Polls `check` until it returns `Ok`, failing with its last error after `timeout`.
pub fn eventually<T>(timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if start.elapsed() > timeout => panic!("not after {timeout:?}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}
