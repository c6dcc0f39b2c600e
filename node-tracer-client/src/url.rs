//! An agent's address as the user writes it: `http://host[:port][/base]`,
//! `https://host[:port][/base]`, `host[:port][/base]` (plain HTTP), or `unix:/path/to.sock`
//! (plain HTTP over a unix socket: an agent's local socket, or a Docker Engine's).

use std::path::PathBuf;

/// Where to connect and what to call it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUrl {
    pub tls: bool,
    /// `host:port`, as `TcpStream::connect` takes it (a name is resolved then).
    pub addr: String,
    /// The host alone, without brackets: the TLS server name the certificate must carry.
    pub host: String,
    /// The authority as given (the `Host` header).
    pub authority: String,
    /// The URL's path without a trailing `/` (`""` or `/base`): endpoints go under it.
    pub base: String,
    /// For `unix:/path`: the socket to connect to instead of `addr` (which then holds the path,
    /// for messages).
    pub unix: Option<PathBuf>,
}

impl AgentUrl {
    pub fn parse(url: &str) -> Result<Self, &'static str> {
        if let Some(path) = url.strip_prefix("unix:") {
            // A socket has no host: the Host header still needs one (HTTP/1.1), and `localhost`
            // is what curl and the Docker CLI send.
            if !path.starts_with('/') {
                return Err("a unix socket is given by its absolute path (unix:/path/to.sock)");
            }
            return Ok(Self {
                tls: false,
                addr: path.to_owned(),
                host: "localhost".into(),
                authority: "localhost".into(),
                base: String::new(),
                unix: Some(PathBuf::from(path)),
            });
        }
        let (tls, rest) = match url.split_once("://") {
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            Some(_) => return Err("only http:// and https:// are supported"),
            None => (false, url),
        };
        let (authority, base) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        if authority.is_empty() {
            return Err("no host");
        }
        if authority.contains('@') {
            return Err("credentials do not go in the URL (use --api-token-file)");
        }
        // A port is present if the last ':' comes after any IPv6 literal's ']'.
        let colon = authority
            .rfind(':')
            .filter(|c| authority.rfind(']').is_none_or(|b| *c > b));
        let (host, addr) = match colon {
            Some(c) => {
                if authority[c + 1..].parse::<u16>().is_err() {
                    return Err("bad port");
                }
                (&authority[..c], authority.to_owned())
            }
            None => (
                authority,
                format!("{authority}:{}", if tls { 443 } else { 80 }),
            ),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("no host");
        }
        Ok(Self {
            tls,
            addr,
            host: host.to_owned(),
            authority: authority.to_owned(),
            base: base.trim_end_matches('/').to_owned(),
            unix: None,
        })
    }

    /// The URL of `path` under this agent, for messages.
    pub fn show(&self, path: &str) -> String {
        if self.unix.is_some() {
            return format!(
                "unix:{}{}{path}",
                self.addr,
                if path.is_empty() { "" } else { ":" }
            );
        }
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}{path}", self.authority, self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let u = AgentUrl::parse("http://127.0.0.1:9100").unwrap();
        assert_eq!((u.addr.as_str(), u.base.as_str()), ("127.0.0.1:9100", ""));
        assert!(!u.tls);
        let u = AgentUrl::parse("node1:9100/agent/").unwrap();
        assert_eq!((u.addr.as_str(), u.base.as_str()), ("node1:9100", "/agent"));
        assert_eq!(u.show("/snapshot"), "http://node1:9100/agent/snapshot");
        let u = AgentUrl::parse("http://[::1]").unwrap();
        assert_eq!((u.addr.as_str(), u.host.as_str()), ("[::1]:80", "::1"));
        let u = AgentUrl::parse("https://[::1]:9100").unwrap();
        assert_eq!((u.addr.as_str(), u.host.as_str()), ("[::1]:9100", "::1"));
        assert!(u.tls);
        let u = AgentUrl::parse("https://agent.example").unwrap();
        assert_eq!(u.addr, "agent.example:443");
        assert!(AgentUrl::parse("ftp://x").is_err());
        assert!(AgentUrl::parse("http:///snapshot").is_err());
        assert!(AgentUrl::parse("http://h:notaport").is_err());
        assert!(AgentUrl::parse("http://user:secret@h:1").is_err());
        assert_eq!(AgentUrl::parse("node1:9100").unwrap().unix, None);
    }

    #[test]
    fn unix_socket_form() {
        let u = AgentUrl::parse("unix:/var/run/docker.sock").unwrap();
        assert_eq!(u.unix, Some(PathBuf::from("/var/run/docker.sock")));
        assert!(!u.tls);
        assert_eq!((u.authority.as_str(), u.base.as_str()), ("localhost", ""));
        assert_eq!(
            u.show("/containers/json"),
            "unix:/var/run/docker.sock:/containers/json"
        );
        assert_eq!(u.show(""), "unix:/var/run/docker.sock");
        assert!(AgentUrl::parse("unix:relative.sock").is_err());
        assert!(AgentUrl::parse("unix:").is_err());
    }
}
