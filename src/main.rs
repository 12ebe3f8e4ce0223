//! Entry point: crypto provider, flags, logging, then `app`.

use std::process::ExitCode;

use clap::Parser;
use cloudwatch_metrics_adapter::{app, config::Cli, telemetry};

/// mimalloc rather than glibc's malloc: cheaper for the engine's many small allocations, and it
/// gives freed memory back instead of keeping it in per-thread arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // One rustls provider for the whole process (the AWS SDK, the server and rcgen all use it).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match app::main(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
