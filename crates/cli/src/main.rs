//! `weft`: the command line.

mod demo;
mod procs;

use clap::{Parser, Subcommand};

/// weft: a service mesh for gRPC that balances every request.
#[derive(Parser, Debug)]
#[command(name = "weft", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the square demo on this machine (no root, no Kubernetes): three
    /// replicas, each behind its own weft-proxy, called (a) through a
    /// Kubernetes-style connection balancer, (b) through weft, and (c)
    /// through weft with one replica made slow.
    Demo(demo::DemoArgs),
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
