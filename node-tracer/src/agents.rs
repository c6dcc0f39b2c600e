//! The agents a view reads (`top`, `trace icmp`, `macs` with `--connect`): every URL given, and
//! for a URL whose host is a DNS name with several addresses, one agent per address — what a
//! Kubernetes headless Service gives (one A record per agent pod).

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr, ToSocketAddrs as _},
};

use node_tracer_client::{Agent, ClientError, Credentials};

/// Turns a host name and port into addresses. The system's resolver in the commands; a table
/// in tests (a test may not edit /etc/hosts).
pub trait Resolver {
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// getaddrinfo: /etc/hosts, then DNS (a cluster's resolver answers a headless Service's name
/// with every ready pod's address).
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok((host, port).to_socket_addrs()?.collect())
    }
}

/// The agents behind `urls`, each with `creds` (every agent gets the same credentials: a
/// DaemonSet's agents share one token Secret and one CA).
///
/// A URL whose host is a name resolving to two or more addresses becomes one agent per
/// address (same scheme, path, credentials and TLS server name, so a certificate issued for
/// the Service's name still verifies). IPv4 addresses are taken when there are any, else IPv6:
/// a dual-stack name gives each agent twice, once per family, and `localhost` gives `127.0.0.1`
/// and `::1` — one agent, not two. A name that resolves to one address, or not at all, stays
/// one agent as written (one that does not resolve then fails like any agent that does not
/// answer, by name). The same agent given twice is read once.
pub fn agents(
    urls: &[String],
    creds: &Credentials,
    resolver: &dyn Resolver,
) -> Result<Vec<Agent>, ClientError> {
    let mut out: Vec<Agent> = Vec::new();
    for url in urls {
        let agent = Agent::new(url, creds)?;
        let addrs = match agent.host_port() {
            (host, Some(port)) if host.parse::<IpAddr>().is_err() => {
                resolver.resolve(host, port).map_or_else(
                    |e| {
                        log::debug!("resolving {host}: {e}");
                        Vec::new()
                    },
                    one_family,
                )
            }
            _ => Vec::new(),
        };
        let expanded = if addrs.len() >= 2 {
            addrs.into_iter().map(|a| agent.at(a)).collect()
        } else {
            vec![agent]
        };
        for a in expanded {
            if !out.iter().any(|o| o.url("") == a.url("")) {
                out.push(a);
            }
        }
    }
    Ok(out)
}

/// The IPv4 addresses if there are any, else the IPv6 ones; sorted, each once.
fn one_family(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let v4: BTreeSet<SocketAddr> = addrs.iter().filter(|a| a.is_ipv4()).copied().collect();
    if v4.is_empty() {
        addrs
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    } else {
        v4.into_iter().collect()
    }
}

/// What each agent is called in a NODE column and in warnings: the node name its snapshot gave,
/// or its address when it gave none. Two agents naming the same node (two agents on one host,
/// or hosts that share a host name) are told apart by their addresses: `name@address`.
pub fn node_labels(agents: &[(Option<String>, String)]) -> Vec<String> {
    agents
        .iter()
        .map(|(name, address)| match name {
            Some(n) if agents.iter().filter(|(o, _)| o.as_ref() == Some(n)).count() == 1 => {
                n.clone()
            }
            Some(n) => format!("{n}@{address}"),
            None => address.clone(),
        })
        .collect()
}

/// An agent's address as a NODE label: its URL without the scheme (`10.0.0.3:9465`).
pub fn address(agent: &Agent) -> String {
    let url = agent.url("");
    url.split_once("://")
        .map_or_else(|| url.clone(), |(_, rest)| rest.to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A resolver from a table, as a cluster's DNS would answer.
    struct Table(HashMap<&'static str, Vec<SocketAddr>>);

    impl Resolver for Table {
        fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
            self.0
                .get(host)
                .map(|a| {
                    a.iter()
                        .map(|s| SocketAddr::new(s.ip(), port))
                        .collect::<Vec<_>>()
                })
                .ok_or_else(|| std::io::Error::other("no such name"))
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn table() -> Table {
        Table(HashMap::from([
            (
                "node-tracer.node-tracer.svc",
                vec![sa("10.0.2.7:0"), sa("10.0.1.5:0"), sa("10.0.2.7:0")],
            ),
            ("one.example", vec![sa("10.9.9.9:0")]),
            ("localhost", vec![sa("127.0.0.1:0"), sa("[::1]:0")]),
            ("v6only", vec![sa("[fd00::2]:0"), sa("[fd00::1]:0")]),
        ]))
    }

    fn urls(got: &[Agent]) -> Vec<String> {
        got.iter().map(|a| a.url("/snapshot")).collect()
    }

    fn expand(given: &[&str]) -> Vec<String> {
        let given: Vec<String> = given.iter().map(|s| (*s).to_owned()).collect();
        urls(&agents(&given, &Credentials::default(), &table()).unwrap())
    }

    #[test]
    fn a_name_with_several_addresses_is_one_agent_per_address() {
        assert_eq!(
            expand(&["http://node-tracer.node-tracer.svc:9465"]),
            [
                "http://10.0.1.5:9465/snapshot",
                "http://10.0.2.7:9465/snapshot"
            ]
        );
    }

    #[test]
    fn one_address_a_literal_or_an_unknown_name_stays_as_written() {
        assert_eq!(
            expand(&["one.example:9465", "10.1.1.1:9465", "nowhere:9465"]),
            [
                "http://one.example:9465/snapshot",
                "http://10.1.1.1:9465/snapshot",
                "http://nowhere:9465/snapshot"
            ]
        );
    }

    #[test]
    fn one_family_only_and_each_agent_once() {
        assert_eq!(
            expand(&["http://localhost:9465", "http://127.0.0.1:9465"]),
            [
                "http://localhost:9465/snapshot",
                "http://127.0.0.1:9465/snapshot"
            ],
            "localhost's two families are one agent"
        );
        assert_eq!(
            expand(&["v6only:1", "v6only:1"]),
            ["http://[fd00::1]:1/snapshot", "http://[fd00::2]:1/snapshot"]
        );
    }

    #[test]
    fn a_bad_url_is_refused() {
        let e = agents(
            &["ftp://x".to_owned()],
            &Credentials::default(),
            &SystemResolver,
        )
        .unwrap_err();
        assert!(e.to_string().contains("ftp://x"), "{e}");
    }

    #[test]
    fn labels_are_node_names_told_apart_by_address() {
        let got = node_labels(&[
            (Some("node-a".into()), "10.0.0.1:9465".into()),
            (Some("same".into()), "10.0.0.2:9465".into()),
            (Some("same".into()), "10.0.0.3:9465".into()),
            (None, "10.0.0.4:9465".into()),
        ]);
        assert_eq!(
            got,
            [
                "node-a",
                "same@10.0.0.2:9465",
                "same@10.0.0.3:9465",
                "10.0.0.4:9465"
            ]
        );
    }
}
