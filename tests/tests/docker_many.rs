//! 200 containers on one Docker Engine (a real `dockerd` of the test's own, see
//! `node_tracer_tests::docker`): `peers` names every one of their veths as `docker inspect`
//! names the container, and an agent watching all 200 veths exports every name.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use node_tracer_tests::{
    Agent, TempDir,
    docker::{Engine, only_docker, peers},
    require_root, require_tool, sh, unique,
};

const CONTAINERS: usize = 200;

/// Host interfaces by ifindex.
fn links_by_ifindex() -> BTreeMap<u64, String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let ifindex = std::fs::read_to_string(e.path().join("ifindex")).ok()?;
            Some((
                ifindex.trim().parse().ok()?,
                e.file_name().to_string_lossy().into_owned(),
            ))
        })
        .collect()
}

/// The value of label `key` in one exposition line.
fn label<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!("{key}=\""))? + key.len() + 2;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

#[test]
fn two_hundred_containers_are_each_named_by_peers_and_by_the_agent() {
    require_root();
    require_tool("nsenter");
    let engine = Engine::start("dkm");
    let tmp = TempDir::new("dkm");
    let base = unique("m");
    let names: Vec<String> = (0..CONTAINERS).map(|i| format!("{base}-{i:03}")).collect();
    engine.run_many(&names);

    // The oracle: `docker inspect`'s name and id, and the host veth whose ifindex the
    // container's eth0 names as its peer (`eth0@ifN`, read in the container's namespace).
    let links = links_by_ifindex();
    let mut expected: BTreeMap<String, (String, String)> = BTreeMap::new();
    for i in engine.inspect_many(&names) {
        let key = i["NetworkSettings"]["SandboxKey"].as_str().unwrap();
        let line = sh(&format!("nsenter --net={key} ip -o link show dev eth0"));
        let peer: u64 = line
            .split_once("@if")
            .and_then(|(_, r)| r.split(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no peer ifindex in {line:?}"));
        let veth = links[&peer].clone();
        let name = i["Name"]
            .as_str()
            .unwrap()
            .trim_start_matches('/')
            .to_owned();
        let id = i["Id"].as_str().unwrap().to_owned();
        assert!(expected.insert(veth, (name, id)).is_none(), "a veth twice");
    }
    assert_eq!(expected.len(), CONTAINERS);

    let args = only_docker(&tmp, &[&engine.socket]);
    let (rows, stderr) = peers(&args);
    for (veth, (name, id)) in &expected {
        let r = rows
            .iter()
            .find(|r| r["name"] == veth.as_str())
            .unwrap_or_else(|| panic!("no row for {veth} ({name})"));
        assert_eq!(r["container"]["name"], name.as_str(), "{r:#}");
        assert_eq!(r["container"]["id"], id.as_str(), "{r:#}");
        assert_eq!(r["pod"]["source"], "docker", "{r:#}");
        assert_eq!(r["master"], engine.bridge.name.as_str(), "{r:#}");
    }
    assert!(!stderr.contains("WARN"), "a healthy engine warns: {stderr}");

    // The agent on all 200 veths: one port_info series per veth, named as inspect names it.
    let mut agent_args = args.clone();
    for veth in expected.keys() {
        agent_args.extend(["-i".to_owned(), veth.clone()]);
    }
    let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let agent = Agent::start(&agent_args);
    let start = Instant::now();
    let exported = loop {
        let m = agent.metrics();
        let exported: BTreeMap<String, String> = m
            .lines()
            .filter(|l| l.starts_with("node_tracer_port_info{"))
            .filter_map(|l| Some((label(l, "interface")?.into(), label(l, "name")?.into())))
            .filter(|(veth, _)| expected.contains_key(veth))
            .collect();
        if exported.len() == CONTAINERS && exported.values().all(|n| !n.is_empty()) {
            break exported;
        }
        // Only catches a hang: the names come from the discovery at start.
        assert!(
            start.elapsed() < Duration::from_mins(3),
            "{} of {CONTAINERS} veths named in /metrics",
            exported.values().filter(|n| !n.is_empty()).count()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    for (veth, (name, _)) in &expected {
        assert_eq!(&exported[veth], name, "name label of {veth}");
    }
    let distinct: BTreeSet<&String> = exported.values().collect();
    assert_eq!(distinct.len(), CONTAINERS, "distinct name labels");

    let (status, stderr) = agent.stop_with(libc::SIGTERM);
    assert!(status.success(), "{status}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
