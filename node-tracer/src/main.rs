//! node-tracer: which pod is behind every veth, and what it sends — from one eBPF agent.
//!
//! The binary: [`cli`] defines the command line, `cmd/` wires each command to the library (and
//! to the lab, `node-tracer-lab`, which the library never uses).

mod cli;
mod cmd;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use node_tracer::shutdown;

use cli::{Cli, Command, TraceWhat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .format_timestamp_millis()
        .init();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the whole context chain.
            eprintln!("node-tracer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    // Commands that attach programs or build a lab undo it on a stop signal, whenever it comes.
    // The others keep the default action: reads have nothing to undo, `lab down` undoes a
    // half-built `lab up`, and the `--connect` clients attach nothing.
    let owns_cleanup = match &cli.command {
        Command::Run(_) | Command::Top(_) => true,
        Command::Trace {
            what: TraceWhat::Icmp(args),
        } => args.connect.is_empty(),
        Command::Macs(args) => args.connect.is_empty(),
        Command::Peers { .. } | Command::Lab { .. } | Command::RestoreRcuExpedited { .. } => false,
    };
    if owns_cleanup {
        shutdown::install().context("installing the stop-signal handlers")?;
    }
    match cli.command {
        Command::RestoreRcuExpedited { value } => {
            node_tracer::probe::rcu::watchdog(&value)?;
            Ok(())
        }
        Command::Lab {
            action,
            name,
            bridge,
            docker_bridge,
        } => cmd::lab::lab(action, name, bridge, docker_bridge),
        Command::Run(args) => cmd::run::run(&args, cli.log_level),
        Command::Top(args) => cmd::top::top(&args, cli.log_level),
        Command::Trace {
            what: TraceWhat::Icmp(args),
        } => current_thread()?.block_on(cmd::trace::icmp(&args, cli.log_level)),
        Command::Macs(args) => current_thread()?.block_on(cmd::macs::macs(&args, cli.log_level)),
        Command::Peers {
            json,
            connect,
            credentials,
            sources,
        } => current_thread()?.block_on(cmd::peers::peers(
            json,
            connect.as_deref(),
            &credentials,
            &sources,
        )),
    }
}

/// The runtime of the commands that do one thing at a time (`run` and `top` build their own).
fn current_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
