//! weft-proxy's entry point: configuration, logging, runtimes, signals.

use std::process::ExitCode;

use clap::Parser;
use weft_proxy::{Config, Listeners, Proxy};

/// Exit code for an invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit code when a listener cannot be bound (EX_UNAVAILABLE).
const EXIT_BIND: u8 = 69;

fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let filter = match config.log.parse::<tracing_subscriber::filter::Targets>() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: invalid value '{}' for '--log <LOG>': {e}", config.log);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    {
        use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt};
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .with(filter)
            .init();
    }

    let runtime = if config.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(config.threads))
            .thread_name("weft-data")
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Admin (metrics scrapes, readiness) gets a small runtime of its own, so
    // it never competes with the data path's tasks and stays responsive when
    // the data path is busy.
    let admin = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the admin runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let admin_handle = admin.handle().clone();
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_thread = std::thread::Builder::new().name("weft-admin".into()).spawn(move || {
        admin.block_on(async {
            let _ = admin_stopped.await;
        })
    });

    let code = runtime.block_on(async move {
        let listeners = match Listeners::bind(&config).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::from(EXIT_BIND);
            }
        };
        tracing::info!(config = %config.to_json(), "weft-proxy starting");
        let proxy = Proxy::spawn(config, listeners, Some(admin_handle));
        tracing::info!(
            outbound = ?proxy.outbound_addr,
            inbound = ?proxy.inbound_addr,
            admin = ?proxy.admin_addr,
            "listening"
        );
        wait_for_signal(&proxy).await;
        if proxy.wait().await {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    });
    let _ = admin_stop.send(());
    if let Ok(t) = admin_thread {
        let _ = t.join();
    }
    code
}

/// Starts the drain on SIGTERM or SIGINT (or returns when admin /shutdown
/// has already started it).
async fn wait_for_signal(proxy: &Proxy) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::warn!("cannot install signal handlers; stop the proxy with POST /shutdown");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
        _ = proxy.closed() => return,
    }
    proxy.shutdown();
}
