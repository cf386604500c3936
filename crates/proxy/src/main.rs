//! weft-proxy's entry point: configuration, logging, runtimes, signals.

use std::process::ExitCode;

use weft_proxy::{Config, Listeners, Proxy};

/// Exit code for an invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit code when a listener cannot be bound (EX_UNAVAILABLE).
const EXIT_BIND: u8 = 69;

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if let Err(e) = init_logging(&config.log) {
        eprintln!("error: invalid value '{}' for '--log <LOG>': {e}", config.log);
        return ExitCode::from(EXIT_CONFIG);
    }
    let (runtime, admin) = match runtimes(config.threads) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
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
        let signals = Signals::install();
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
        signals.wait(&proxy).await;
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

/// Logs to stderr through the `--log` filter.
fn init_logging(filter: &str) -> Result<(), tracing_subscriber::filter::ParseError> {
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt};
    let filter = filter.parse::<tracing_subscriber::filter::Targets>()?;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .init();
    Ok(())
}

/// The data path's runtime (current-thread for one thread, a sidecar's
/// usual budget), and a small one for admin, so that scrapes and readiness
/// checks never compete with the data path and stay responsive when it is
/// busy.
fn runtimes(threads: u16) -> Result<(tokio::runtime::Runtime, tokio::runtime::Runtime), String> {
    let data = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(threads))
            .thread_name("weft-data")
            .enable_all()
            .build()
    }
    .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let admin = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the admin runtime: {e}"))?;
    Ok((data, admin))
}

/// SIGTERM and SIGINT, caught from before the listeners are bound: a signal
/// that arrives while the proxy starts drains it rather than killing it.
struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(term), Ok(int)) => Signals(Some((term, int))),
            _ => {
                tracing::warn!("cannot install signal handlers; stop the proxy with POST /shutdown");
                Signals(None)
            }
        }
    }

    /// Starts the drain on SIGTERM or SIGINT (or returns when admin
    /// /shutdown has already started it).
    async fn wait(self, proxy: &Proxy) {
        let Some((mut term, mut int)) = self.0 else { return };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
            _ = proxy.closed() => return,
        }
        proxy.shutdown();
    }
}
