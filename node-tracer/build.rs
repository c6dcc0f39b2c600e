use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root_dir = format!("{manifest_dir}/../node-tracer-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "node-tracer-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the eBPF programs (is bpf-linker installed? run `cargo xtask setup`)")
}
