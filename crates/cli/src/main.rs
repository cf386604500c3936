//! `weft`: the command line.

mod demo;
mod identity;
mod procs;
mod up;

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
    /// Run a whole mesh on this machine from a mesh file: weft-control, and
    /// for each workload its replicas, each beside its own weft-proxy; an
    /// entry proxy for callers outside the mesh. Shows a live status table;
    /// Ctrl-C (or `weft down`) stops everything it started. Changing a
    /// workload's `replicas` in the file scales it live.
    Up(up::UpArgs),
    /// Stop the mesh `weft up` runs from this directory (by its PIDs,
    /// nothing else), draining the proxies first.
    Down(up::ctl::DirArgs),
    /// Set a running workload's replicas (until the file's `replicas` for it changes).
    Scale(up::ctl::ScaleArgs),
    /// Show the running mesh's status table.
    Status(up::ctl::DirArgs),
    /// Print and follow a workload's logs (every replica, prefixed with its name).
    Logs(up::ctl::LogsArgs),
    /// The mesh's identities: the CA's state, and trust-anchor rotation.
    #[command(subcommand)]
    Identity(identity::IdentityCommand),
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args).await,
        Command::Up(args) => up::run(args).await,
        Command::Down(args) => up::ctl::down(args).await,
        Command::Scale(args) => up::ctl::scale(args).await,
        Command::Status(args) => up::ctl::status(args).await,
        Command::Logs(args) => up::ctl::logs(args).await,
        Command::Identity(cmd) => identity::run(cmd).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
