//! Installs what building and testing need, only when missing: quick when all is present.

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::status;

/// Debian packages: the bpf-linker build (LLVM 22), and the real tools the tests use as
/// oracles and parts.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "libxml2-dev",
    "gcc",
    "iproute2",
    "iputils-ping",
    "tcpdump",
    "bpftool",
    "iperf3",
    "tshark",
    "prometheus",
    "containerd",
    "runc",
    "containernetworking-plugins",
    // Docker Engine (started by tests/docker.rs on its own socket) and a static busybox, the
    // rootfs of the image those tests import (no registry).
    "docker.io",
    "busybox-static",
    // Rootful Podman (tests/podman.rs runs it with its own storage and CNI network; conmon
    // comes with it).
    "podman",
    "libcap2-bin",
    "tmux",
    "ethtool",
    "procps",
    // The drop tests' oracles: a DROP rule's own packet counter (nstat and ss are iproute2's).
    "iptables",
];

pub fn run() -> Result<()> {
    apt()?;
    rust_src()?;
    bpf_linker()?;
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("==> installing Debian packages: {}", missing.join(" "));
    status(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &format!("apt-get install {}", missing.join(" ")),
    )
}

fn rust_src() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("running rustup")?;
    if !out.status.success() {
        bail!(
            "no nightly toolchain (needed to build the eBPF programs with -Z build-std): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if String::from_utf8_lossy(&out.stdout).contains("rust-src") {
        return Ok(());
    }
    eprintln!("==> installing rust-src for the nightly toolchain");
    status(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        "rustup component add rust-src --toolchain nightly",
    )
}

fn bpf_linker() -> Result<()> {
    let ok = Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Ok(());
    }
    // bpf-linker must use the same LLVM as rustc nightly (22 here).
    eprintln!("==> building bpf-linker against LLVM 22 (about a minute)");
    status(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
        "cargo install bpf-linker",
    )
}
