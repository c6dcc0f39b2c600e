use std::time::Duration;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use super::*;

/// A one-connection server: answers `reply` and hands back the request it read.
async fn server(reply: &'static [u8]) -> (String, tokio::task::JoinHandle<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (c, _) = l.accept().await.unwrap();
        answer(c, reply).await
    });
    (format!("http://{addr}"), task)
}

/// Reads one request head from `c`, answers `reply`, closes; the request it read.
async fn answer(
    mut c: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    reply: &[u8],
) -> String {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = c.read(&mut buf).await.unwrap();
        assert_ne!(n, 0, "client closed before its request head");
        req.extend_from_slice(&buf[..n]);
    }
    c.write_all(reply).await.unwrap();
    c.shutdown().await.unwrap();
    String::from_utf8_lossy(&req).into_owned()
}

fn token_file(text: &str) -> (tempdir::Dir, PathBuf) {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("token");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            let p = std::env::temp_dir().join(format!(
                "ntc-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[tokio::test]
async fn a_body_and_the_request_that_asked_for_it() {
    let (url, srv) = server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").await;
    let agent = Agent::new(&format!("{url}/base/"), &Credentials::default()).unwrap();
    assert_eq!(
        agent.get("/snapshot").await.unwrap(),
        Bytes::from_static(b"{}")
    );
    let req = srv.await.unwrap();
    assert!(req.starts_with("GET /base/snapshot HTTP/1.1\r\n"), "{req}");
    assert!(!req.to_ascii_lowercase().contains("authorization"), "{req}");
}

#[tokio::test]
async fn the_token_goes_in_the_header_and_nowhere_else() {
    let (_dir, path) = token_file("  s3cr3t-token\n");
    let (url, srv) = server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let creds = Credentials {
        token_file: Some(path),
        ..Credentials::default()
    };
    let agent = Agent::new(&url, &creds).unwrap();
    agent.get("/snapshot").await.unwrap();
    assert!(
        srv.await
            .unwrap()
            .contains("authorization: Bearer s3cr3t-token\r\n")
    );
    assert!(!format!("{agent:?}").contains("s3cr3t"));
}

#[tokio::test]
async fn a_refusal_is_one_line_with_the_agents_reason() {
    let (url, _srv) =
        server(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 19\r\n\r\nno or wrong token\n\n")
            .await;
    let agent = Agent::new(&url, &Credentials::default()).unwrap();
    let e = agent.get("/snapshot").await.unwrap_err();
    assert!(e.is_refusal());
    assert_eq!(
        one_line(&e),
        format!("the agent at {url}/snapshot refused: no or wrong token (HTTP 401)")
    );
}

#[tokio::test]
async fn a_refused_connection_names_its_cause_once() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let e = Agent::plain(addr).get("/snapshot").await.unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
    let line = one_line(&e);
    assert_eq!(line.matches("Connection refused").count(), 1, "{line}");
}

#[tokio::test]
async fn an_agent_that_never_answers_is_a_timeout_not_a_hang() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    // Accepts and then says nothing.
    let _srv = tokio::spawn(async move {
        let (c, _) = l.accept().await.unwrap();
        tokio::time::sleep(Duration::from_hours(1)).await;
        drop(c);
    });
    let mut agent = Agent::plain(addr);
    agent.timeout = Duration::from_millis(200);
    let e = agent.get("/snapshot").await.unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
}

#[tokio::test]
async fn a_stream_comes_chunk_by_chunk_until_the_end() {
    let (url, _srv) = server(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab\n\r\n2\r\nc\n\r\n0\r\n\r\n",
    )
    .await;
    let agent = Agent::new(&url, &Credentials::default()).unwrap();
    let mut s = agent.stream("/trace/icmp").await.unwrap();
    let mut all = Vec::new();
    while let Some(c) = s.chunk().await.unwrap() {
        all.extend_from_slice(&c);
    }
    assert_eq!(all, b"ab\nc\n");
}

#[test]
fn credentials_that_cannot_work_are_refused_before_connecting() {
    let e = Agent::new("https://127.0.0.1:1", &Credentials::default()).unwrap_err();
    assert!(matches!(e, ClientError::NoCa { .. }), "{e:?}");
    let (_dir, path) = token_file(" \n");
    let creds = Credentials {
        token_file: Some(path),
        ..Credentials::default()
    };
    let e = Agent::new("http://127.0.0.1:1", &creds).unwrap_err();
    assert!(matches!(e, ClientError::EmptyToken { .. }), "{e:?}");
    let creds = Credentials {
        token_file: Some("/nonexistent/ntc-token".into()),
        ..Credentials::default()
    };
    let e = Agent::new("http://127.0.0.1:1", &creds).unwrap_err();
    assert!(one_line(&e).contains("No such file"), "{}", one_line(&e));
}

#[tokio::test]
async fn a_unix_socket_carries_the_same_http() {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("engine.sock");
    let l = tokio::net::UnixListener::bind(&path).unwrap();
    let srv = tokio::spawn(async move {
        let (c, _) = l.accept().await.unwrap();
        answer(c, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]").await
    });
    let url = format!("unix:{}", path.display());
    let agent = Agent::new(&url, &Credentials::default()).unwrap();
    assert_eq!(
        agent.get("/containers/json").await.unwrap(),
        Bytes::from_static(b"[]")
    );
    let req = srv.await.unwrap();
    assert!(
        req.starts_with("GET /containers/json HTTP/1.1\r\n"),
        "{req}"
    );
    assert!(
        req.to_ascii_lowercase().contains("host: localhost\r\n"),
        "{req}"
    );
    // Nobody listening any more: a connect error naming the socket, not a hang.
    std::fs::remove_file(&path).unwrap();
    let e = agent.get("/containers/json").await.unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
    assert!(one_line(&e).contains("engine.sock"), "{}", one_line(&e));
}
