use super::*;
use crate::model::{Mode, PodSource};

fn snap() -> Snapshot {
    Snapshot {
        ports: vec![
            Port {
                ifindex: 7,
                name: "veth591ea0bf".into(),
                mode: Mode::Bridged,
                master: Some("cni0".into()),
                port_no: Some(2),
                peer: Some(Peer {
                    ifindex: 3,
                    name: Some("eth0".into()),
                    addresses: vec!["10.244.1.5/24".into()],
                    netnsid: Some(0),
                    netns: Some("/run/netns/cni-1".into()),
                    ..Peer::default()
                }),
                pod: Some(Pod {
                    namespace: "default".into(),
                    name: "web-1".into(),
                    uid: "u1".into(),
                    source: PodSource::Cri,
                    container: None,
                }),
                ..Port::default()
            },
            Port {
                ifindex: 9,
                name: "veth27cee774".into(),
                mode: Mode::Routed,
                addresses: vec!["10.188.2.1/32".into()],
                routes: vec!["10.188.2.5/32".into()],
                ..Port::default()
            },
        ],
        bridges: vec![Bridge {
            ifindex: 3,
            name: "docker0".into(),
            ..Bridge::default()
        }],
        ..Snapshot::default()
    }
}

#[test]
fn the_last_line_says_which_sources_answered_and_what_each_named() {
    let snap = snap();
    let named = |source| {
        snap.ports
            .iter()
            .filter(|p| p.pod.as_ref().is_some_and(|pod| pod.source == source))
            .count()
    };
    let answered = [
        Answered {
            source: PodSource::Cri,
            at: Some("/run/a.sock".into()),
        },
        Answered {
            source: PodSource::Cri,
            at: Some("/run/b.sock".into()),
        },
        Answered {
            source: PodSource::Proc,
            at: None,
        },
    ];
    let line = sources_line(&answered, &snap);
    let cri = named(PodSource::Cri);
    assert!(cri > 0, "the fixture has CRI pods");
    assert!(
        line.starts_with(&format!(
            "sources: cri (/run/a.sock, /run/b.sock) {cri} port"
        )),
        "{line}"
    );
    assert!(
        line.contains(&format!("proc {} port", named(PodSource::Proc))),
        "{line}"
    );
    assert!(
        !line.contains("docker"),
        "only sources that answered: {line}"
    );
    assert_eq!(sources_line(&[], &snap), "sources: none answered\n");
}

#[test]
fn table_answers_the_seed_questions() {
    let t = to_table(&snap());
    assert!(t.contains("eth0@if3"), "{t}");
    assert!(t.contains("cni0/2"));
    assert!(t.contains("default/web-1 (cri)"));
    assert!(t.contains("routes 10.188.2.5/32"));
    assert!(t.contains("docker0") && t.contains("(no ports)"));
}

#[test]
fn json_has_the_contract_fields() {
    let v: serde_json::Value = serde_json::from_str(&to_json(&snap()).unwrap()).unwrap();
    let row = &v[0];
    for k in [
        "ifindex",
        "name",
        "mac",
        "mode",
        "master",
        "port_no",
        "addresses",
        "routes",
        "peer",
        "pod",
        "container",
        "unseen",
    ] {
        assert!(row.get(k).is_some(), "missing {k}");
    }
    assert_eq!(row["mode"], "bridged");
    assert_eq!(row["peer"]["netnsid"], 0);
    assert_eq!(row["pod"]["source"], "cri");
    assert_eq!(v[1]["pod"], serde_json::Value::Null);
    assert_eq!(v[1]["mode"], "routed");
    assert_eq!(row["container"], serde_json::Value::Null);
    assert_eq!(v[1]["container"], serde_json::Value::Null);
    // A scan of its own attaches nothing: nothing to compare, null.
    assert_eq!(row["unseen"], serde_json::Value::Null);
}

/// From an agent: a veth whose kernel counters exceed what the hooks saw is flagged in the
/// table, in its last line and in JSON; one the agent does not attach to compares nothing.
#[test]
fn an_agents_snapshot_flags_the_veths_with_unseen_packets() {
    let mut s = snap();
    s.node = Some("node-a".into());
    s.ports[0].attached = true;
    s.ports[0].counters.unseen_rx = 40;
    let standalone = to_table(&snap());
    assert!(!standalone.contains("UNSEEN"), "{standalone}");
    let t = to_table(&s);
    let line = |veth: &str| t.lines().find(|l| l.starts_with(veth)).unwrap();
    assert!(t.lines().next().unwrap().contains("UNSEEN"), "{t}");
    assert!(line("veth591ea0bf").contains("rx 40 tx 0 !"), "{t}");
    // Not attached by the agent: "-", not 0.
    assert!(line("veth27cee774").contains("  -  "), "{t}");
    assert_eq!(
        agent_line("http://127.0.0.1:9465", &s),
        "agent: http://127.0.0.1:9465 (node node-a), 1 veths attached, UNSEEN packets on \
         veth591ea0bf (traffic that passed the veth without the agent's hooks)\n"
    );
    s.ports[0].counters.unseen_rx = 0;
    assert!(line_of(&to_table(&s), "veth591ea0bf").contains(" 0  "));
    assert!(agent_line("u", &s).ends_with("no unseen packets\n"));
    s.ports[0].counters.unseen_tx = 3;
    let v: serde_json::Value = serde_json::from_str(&to_json(&s).unwrap()).unwrap();
    assert_eq!(
        v[0]["unseen"],
        serde_json::json!({"receive": 0, "transmit": 3})
    );
    assert_eq!(v[1]["unseen"], serde_json::Value::Null);
}

fn line_of<'a>(t: &'a str, veth: &str) -> &'a str {
    t.lines().find(|l| l.starts_with(veth)).unwrap()
}

#[test]
fn a_docker_container_is_the_pod_and_its_record_sits_beside_it() {
    let mut s = snap();
    s.ports[0].pod = Some(Pod {
        namespace: String::new(),
        name: "shop-web".into(),
        uid: String::new(),
        source: PodSource::Docker,
        container: Some(Container {
            runtime: "docker".into(),
            id: "3956c459e213".into(),
            name: "shop-web".into(),
            image: "nginx:1".into(),
        }),
    });
    let t = to_table(&s);
    assert!(t.contains("shop-web (docker)"), "{t}");
    let v: serde_json::Value = serde_json::from_str(&to_json(&s).unwrap()).unwrap();
    let pod = v[0]["pod"].as_object().unwrap();
    let mut keys: Vec<&str> = pod.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["name", "namespace", "source", "uid"]);
    assert_eq!(v[0]["pod"]["source"], "docker");
    assert_eq!(v[0]["container"]["runtime"], "docker");
    assert_eq!(v[0]["container"]["name"], "shop-web");
    assert_eq!(v[0]["container"]["image"], "nginx:1");
    assert_eq!(v[0]["container"]["id"], "3956c459e213");
}
