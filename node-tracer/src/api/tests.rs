use hyper::header::HeaderValue;

use super::*;

fn caller() -> Caller {
    Caller {
        peer: "10.1.2.3:5555".parse().unwrap(),
        verified_cert: false,
    }
}

fn with_auth(v: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
    h
}

#[test]
fn without_credentials_only_a_loopback_listener_serves() {
    let open = Access::new(&ApiOptions::default(), "127.0.0.1:9465".parse().unwrap()).unwrap();
    assert_eq!(open.check(&HeaderMap::new(), &caller()), Ok(()));
    assert!(open.describe().contains("open to every caller"));
    let v6 = Access::new(&ApiOptions::default(), "[::1]:9465".parse().unwrap()).unwrap();
    assert_eq!(v6.check(&HeaderMap::new(), &caller()), Ok(()));
    let wide = Access::new(&ApiOptions::default(), "0.0.0.0:9465".parse().unwrap()).unwrap();
    assert_eq!(
        wide.check(&HeaderMap::new(), &caller()),
        Err(Denial::NotHere)
    );
    // A token sent to an agent that has none proves nothing.
    assert_eq!(
        wide.check(&with_auth("Bearer x"), &caller()),
        Err(Denial::NotHere)
    );
    // A certificate the agent never asked for proves nothing either.
    let cert = Caller {
        verified_cert: true,
        ..caller()
    };
    assert_eq!(wide.check(&HeaderMap::new(), &cert), Err(Denial::NotHere));
}

#[test]
fn a_token_is_needed_on_every_listener_once_configured() {
    let dir = std::env::temp_dir().join(format!("ntt-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    std::fs::write(&path, "tok-123\n").unwrap();
    let opts = ApiOptions {
        token_file: Some(path),
        ..ApiOptions::default()
    };
    for listen in ["127.0.0.1:1", "0.0.0.0:1"] {
        let a = Access::new(&opts, listen.parse().unwrap()).unwrap();
        assert_eq!(a.check(&HeaderMap::new(), &caller()), Err(Denial::Missing));
        assert_eq!(
            a.check(&with_auth("Bearer tok-12"), &caller()),
            Err(Denial::WrongToken)
        );
        assert_eq!(
            a.check(&with_auth("Basic dG9rLTEyMw=="), &caller()),
            Err(Denial::Missing)
        );
        assert_eq!(a.check(&with_auth("Bearer tok-123"), &caller()), Ok(()));
        assert_eq!(a.check(&with_auth("bearer  tok-123 "), &caller()), Ok(()));
        assert!(!a.describe().contains("tok-123"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refusals_are_counted_by_reason() {
    let a = Access::new(&ApiOptions::default(), "0.0.0.0:1".parse().unwrap()).unwrap();
    let peer = caller().peer;
    a.deny(Denial::NotHere, peer, "GET /snapshot");
    a.deny(Denial::NotHere, peer, "GET /snapshot");
    a.deny(Denial::TlsHandshake, peer, "TLS");
    let d = a.denied();
    assert_eq!(d.len(), Denial::ALL.len());
    assert!(d.contains(&("not_served_here", 2)));
    assert!(d.contains(&("tls_handshake", 1)));
    assert!(d.contains(&("wrong_token", 0)));
}

#[test]
fn bearer_headers() {
    assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
    assert_eq!(bearer(b"BEARER abc "), Some(&b"abc"[..]));
    assert_eq!(bearer(b"Bearer "), None);
    assert_eq!(bearer(b"Bearer"), None);
    assert_eq!(bearer(b"Token abc"), None);
}
