//! `node-tracer top`, the real binary in a real terminal (tmux): rates where ping flows and zero
//! where nothing does, sort, filter, the detail pane, and a terminal put back on `q`. Once
//! reading an agent (`--connect`, deterministic: only the lab's veths) and once standalone
//! (its own programs on every veth of the host, other tests' included).

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use node_tracer_tests::{
    Agent, Link, Pod, TempDir, binary, require_root, require_tool, sh, sh_output, unique,
    unique_net,
};

/// A detached tmux session on a server of its own (`-S`, a socket in a temporary directory), so
/// nothing here touches anyone's tmux; the session and its server are killed by name on drop,
/// also when the test fails, and the socket goes with the directory.
struct Tmux {
    session: String,
    socket: String,
    _dir: TempDir,
}

impl Tmux {
    fn new(width: u16, height: u16) -> Self {
        require_tool("tmux");
        let dir = TempDir::new("tmx");
        let t = Self {
            session: unique("top"),
            socket: dir.0.join("tmux.sock").display().to_string(),
            _dir: dir,
        };
        sh(&format!(
            "tmux -S {} -f /dev/null new-session -d -s {} -x {width} -y {height} sh",
            t.socket, t.session
        ));
        t
    }

    fn tmux(&self, args: &str) -> String {
        sh(&format!("tmux -S {} {args}", self.socket))
    }

    /// Types `text` literally.
    fn type_text(&self, text: &str) {
        self.tmux(&format!(
            "send-keys -t {} -l '{}'",
            self.session,
            text.replace('\'', r"'\''")
        ));
    }

    /// Presses named keys (`Enter`, `BSpace`, `q`).
    fn press(&self, keys: &str) {
        self.tmux(&format!("send-keys -t {} {keys}", self.session));
    }

    fn screen(&self) -> String {
        self.tmux(&format!("capture-pane -p -t {}", self.session))
    }

    fn alternate_on(&self) -> bool {
        self.tmux(&format!(
            "display -p -t {} '#{{alternate_on}}'",
            self.session
        ))
        .trim()
            == "1"
    }

    /// Polls the screen until `ok` holds; generous, for a loaded machine. Fails with the last
    /// screen.
    fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_mins(2),
                "waiting for {what}; the screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = sh_output(&format!(
            "tmux -S {} kill-session -t {}",
            self.socket, self.session
        ));
        let _ = sh_output(&format!("tmux -S {} kill-server", self.socket));
    }
}

/// A process running in the background, killed by its PID on drop.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two bridged pods pinging each other at about 5 packets a second, and an idle third one.
struct Lab {
    br: Link,
    a: Pod,
    b: Pod,
    c: Pod,
    _pings: [Background; 2],
}

impl Lab {
    fn new() -> Self {
        let net = unique_net();
        let br = Link::bridge("br");
        let a = Pod::bridged("a", &br, &format!("{net}.2"), 24);
        let b = Pod::bridged("b", &br, &format!("{net}.3"), 24);
        let c = Pod::bridged("c", &br, &format!("{net}.4"), 24);
        // Static neighbours: no ARP broadcast ever reaches c's port, so its rates stay zero.
        a.ns.exec(&format!(
            "ip neigh replace {} lladdr {} dev eth0 nud permanent",
            b.ip,
            b.mac()
        ));
        b.ns.exec(&format!(
            "ip neigh replace {} lladdr {} dev eth0 nud permanent",
            a.ip,
            a.mac()
        ));
        let ping = |from: &Pod, to: &Pod| {
            Background(
                Command::new("ip")
                    .args(["netns", "exec", &from.ns.name, "ping", "-q", "-i", "0.2"])
                    .arg(&to.ip)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn ping"),
            )
        };
        let pings = [ping(&a, &b), ping(&b, &a)];
        Self {
            br,
            a,
            b,
            c,
            _pings: pings,
        }
    }
}

/// The table row of `veth`: its cells split on blanks (POD VETH BRIDGE PORT PEER RX-pps TX-pps
/// ...). The pods' names have no blanks.
fn row<'s>(screen: &'s str, veth: &str) -> Option<Vec<&'s str>> {
    screen
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.len() > 6 && cells[1] == veth)
}

/// (RX pps, TX pps) of `veth`'s row, as shown.
fn pps<'s>(screen: &'s str, veth: &str) -> Option<(&'s str, &'s str)> {
    row(screen, veth).map(|cells| (cells[5], cells[6]))
}

fn nonzero(cell: &str) -> bool {
    cell.trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .parse::<f64>()
        .is_ok_and(|v| v > 0.0)
}

/// Line numbers of the rows of `veths`, in screen order.
fn order<'v>(screen: &str, veths: &[&'v str]) -> Vec<&'v str> {
    let mut found: Vec<(usize, &str)> = veths
        .iter()
        .filter_map(|v| {
            screen
                .lines()
                .position(|l| l.split_whitespace().nth(1) == Some(v))
                .map(|i| (i, *v))
        })
        .collect();
    found.sort_unstable();
    found.into_iter().map(|(_, v)| v).collect()
}

/// The status the shell printed after `EXIT=` (the typed command line holds `EXIT=$?`, which
/// is no status; the status may follow a prompt on its line).
fn exit_status(screen: &str) -> Option<&str> {
    screen.lines().find_map(|l| {
        let rest = &l[l.find("EXIT=")? + "EXIT=".len()..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        (end > 0).then(|| &rest[..end])
    })
}

/// Drives `top` in tmux through the whole session: rates, sort, filter, detail, quit.
fn drive(lab: &Lab, top_args: &str) {
    let tmux = Tmux::new(120, 30);
    let (a, b, c) = (
        lab.a.veth.name.as_str(),
        lab.b.veth.name.as_str(),
        lab.c.veth.name.as_str(),
    );
    // Type only once the shell is there, so its prompt and the command keep their order.
    tmux.wait("the shell prompt", |s| s.contains('#') || s.contains('$'));
    tmux.type_text(&format!(
        "{} top --interval 1 {top_args}; echo EXIT=$?",
        binary().display()
    ));
    tmux.press("Enter");
    tmux.wait("the top view", |s| s.contains("node-tracer top │"));
    assert!(tmux.alternate_on(), "top draws on the alternate screen");

    // Only the lab's bridge: its three ports.
    tmux.press("/");
    tmux.type_text(&lab.br.name);
    tmux.press("Enter");
    let s = tmux.wait("rates on a and b, none on c", |s| {
        s.contains("3 shown")
            && pps(s, a).is_some_and(|(rx, tx)| nonzero(rx) && nonzero(tx))
            && pps(s, b).is_some_and(|(rx, tx)| nonzero(rx) && nonzero(tx))
            && pps(s, c) == Some(("0", "0"))
    });
    for v in [a, b, c] {
        // The column is 8 cells wide: a longer name is cut with an ellipsis.
        let cell = row(&s, v).unwrap()[2];
        let shown = cell.trim_end_matches('…');
        assert!(
            shown.len() >= 7 && lab.br.name.starts_with(shown),
            "bridge column {cell:?}: {s}"
        );
    }
    assert_eq!(row(&s, a).unwrap()[0], lab.a.ns.name, "{s}");

    // `s` cycles the sort column; from the default (rx-bps) to pod is 11 presses (through
    // tx-bps, the protocol shares, macs, drops, retx and unseen).
    tmux.press("s");
    tmux.wait("sort tx-bps", |s| s.contains("sort tx-bps"));
    for _ in 0..10 {
        tmux.press("s");
    }
    // Pod names are ntta…, nttb…, nttc…: by pod is a, b, c; reversed (S), c, b, a.
    let s = tmux.wait("sort pod", |s| s.contains("sort pod "));
    assert_eq!(order(&s, &[a, b, c]), [a, b, c], "{s}");
    tmux.press("S");
    let s = tmux.wait("sort pod reversed", |s| order(s, &[a, b, c]) == [c, b, a]);
    assert!(s.contains("sort pod"), "{s}");

    // Replace the filter with a's pod: b and c go.
    tmux.press("/");
    for _ in 0..lab.br.name.len() {
        tmux.press("BSpace");
    }
    tmux.type_text(&lab.a.ns.name);
    tmux.press("Enter");
    let s = tmux.wait("only a", |s| s.contains("1 shown") && row(s, a).is_some());
    assert!(row(&s, b).is_none() && row(&s, c).is_none(), "{s}");
    assert!(!s.contains(b) && !s.contains(c), "{s}");

    // The detail pane of the selected (only) row shows the pod's MAC.
    tmux.press("Enter");
    let mac = lab.a.mac();
    let s = tmux.wait("the detail pane", |s| s.contains("pod mac"));
    let line = s
        .lines()
        .find(|l| l.starts_with("pod mac"))
        .expect("pod mac line");
    assert!(line.contains(&mac), "pod mac {mac}: {s}");

    // `q`: top exits 0 and the shell's screen is back.
    tmux.press("q");
    let s = tmux.wait("top to exit", |s| exit_status(s).is_some());
    assert_eq!(exit_status(&s), Some("0"), "{s}");
    assert!(!tmux.alternate_on(), "still on the alternate screen");
    assert!(
        !s.contains("node-tracer top │"),
        "the view is left on screen: {s}"
    );
}

fn preconditions() {
    require_root();
    for t in ["tmux", "ping"] {
        require_tool(t);
    }
}

#[test]
fn top_connected_to_an_agent_in_a_terminal() {
    preconditions();
    let lab = Lab::new();
    // An agent that asks for its API token, as the DaemonSet's does: top passes it on.
    let tmp = TempDir::new("tt");
    let token = tmp.0.join("token");
    std::fs::write(&token, unique("tok")).unwrap();
    let agent = Agent::start(&[
        "-i",
        &lab.a.veth.name,
        "-i",
        &lab.b.veth.name,
        "-i",
        &lab.c.veth.name,
        "--api-token-file",
        token.to_str().unwrap(),
    ]);
    drive(
        &lab,
        &format!(
            "--connect http://{} --api-token-file {}",
            agent.addr,
            token.display()
        ),
    );
}

#[test]
fn top_standalone_in_a_terminal() {
    preconditions();
    let lab = Lab::new();
    drive(&lab, "");
}

#[test]
fn top_without_a_terminal_is_a_one_line_error() {
    require_root();
    for args in [
        &["top", "--connect", "http://127.0.0.1:9"][..],
        &["top"][..],
    ] {
        // At debug level any work done before the check (loading programs, attaching, scanning
        // pods) would log: the error must be the only line.
        let out = Command::new(binary())
            .args(args)
            .env("NODE_TRACER_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("spawn node-tracer top");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {}", out.status);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("node-tracer: error: ") && err.contains("needs a terminal"),
            "{args:?}: {err}"
        );
    }
}

/// A view whose terminal goes away (a closed tmux or ssh session) ends: crossterm spins on a
/// hung-up tty and never returns to the loop that sees the SIGHUP, and such views used to run
/// on at full CPU, forever.
#[test]
fn top_ends_when_its_terminal_hangs_up() {
    preconditions();
    let tmux = Tmux::new(100, 24);
    tmux.wait("the shell prompt", |s| s.contains('#') || s.contains('$'));
    // An agent address that refuses: the view stays up, naming the error, with nothing to read.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    tmux.type_text(&format!(
        "exec {} top --interval 1 --connect http://127.0.0.1:{port}",
        binary().display()
    ));
    tmux.press("Enter");
    tmux.wait("the top view", |s| s.contains("node-tracer top │"));
    let pid: u32 = tmux
        .tmux(&format!(
            "list-panes -t {} -F '#{{pane_pid}}'",
            tmux.session
        ))
        .trim()
        .parse()
        .unwrap();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(
        exe,
        binary().canonicalize().unwrap(),
        "the pane runs top itself (exec)"
    );
    // The terminal hangs up with the server.
    let _ = sh_output(&format!("tmux -S {} kill-server", tmux.socket));
    // Gone, or a zombie nobody reaped: either way it has ended. Still running after a minute is
    // the spinning view (a generous bound that only catches the hang).
    let state = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.chars().next()))
            .flatten()
    };
    let start = Instant::now();
    loop {
        match state(pid) {
            None | Some('Z' | 'X') => break,
            Some(st) => {
                if start.elapsed() > Duration::from_mins(1) {
                    // SAFETY: kill has no memory preconditions; the PID runs our binary (checked above).
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                    panic!("top still running (state {st}) a minute after its terminal hung up");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
