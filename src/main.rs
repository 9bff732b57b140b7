//! The `ocicache` command: parse flags, set up logging, bind, serve until SIGINT/SIGTERM.

use clap::Parser;
use ocicache::cmd;
use ocicache::config::{Cli, Command, Config, Layered, LogFormat};

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    let mut cli = Cli::parse();
    let command = cli.command.take();
    if let Some(Command::Hosts(args)) = command {
        return cmd::hosts::run(args);
    }
    if let Some(Command::CheckConfig) = command {
        let layered = Layered::from_cli(&cli).unwrap_or_else(|e| exit_with(e));
        layered.validate().unwrap_or_else(|e| exit_with(e));
        print!("{}", layered.to_toml().unwrap_or_else(|e| exit_with(e)));
        return Ok(());
    }
    if matches!(command, Some(Command::Warm(_)) | Some(Command::Status(_))) && cli.log_level.is_none() {
        // The embedded server's per-request lines would break up warm's progress bars.
        cli.log_level = Some("warn".to_owned());
    }
    let config = Config::from_cli(cli).unwrap_or_else(|e| exit_with(e));
    init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match command {
        None | Some(Command::Serve) | Some(Command::Hosts(_)) | Some(Command::CheckConfig) => {}
        Some(Command::Gc(args)) => return cmd::gc::run(args, config),
        Some(Command::Warm(args)) => {
            let all_ok = runtime.block_on(cmd::warm::run(args, config))?;
            std::process::exit(if all_ok { 0 } else { 1 });
        }
        Some(Command::Status(args)) => {
            let all_cached = runtime.block_on(cmd::status::run(args, config))?;
            std::process::exit(if all_cached { 0 } else { 1 });
        }
    }
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        ocicache::run(listener, config, shutdown_signal()).await.map_err(anyhow::Error::msg)
    })?;
    tracing::info!("ocicache stopped");
    Ok(())
}

/// A configuration that cannot be used: one line naming the setting, status 2.
fn exit_with(e: ocicache::config::ConfigError) -> ! {
    eprintln!("ocicache: {e}");
    std::process::exit(2);
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// glibc gives each thread that allocates under contention an arena of its own (up to 8 per core)
/// and keeps what is freed in it. tokio's blocking pool has many short-lived threads doing store I/O,
/// so the arenas, not the data, set the peak RSS. Two arenas serve two cores' worth of allocation
/// with no measurable slowdown and keep the peak where the buffers put it.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tuning value; called first thing, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
