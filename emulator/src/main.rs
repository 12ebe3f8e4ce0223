//! `cloudwatch-emulator`: the emulator as a standalone server for demos, scripts and benchmarks.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use cloudwatch_emulator::Emulator;

/// A CloudWatch emulator (GetMetricData, PutMetricData, ListMetrics over Smithy RPC v2 CBOR).
#[derive(Debug, Parser)]
#[command(name = "cloudwatch-emulator", version, about)]
struct Args {
    /// Address to listen on. Keep it on loopback: the emulator has no authentication.
    #[arg(
        long,
        env = "CLOUDWATCH_EMULATOR_LISTEN",
        default_value = "127.0.0.1:4599"
    )]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let emulator = Emulator::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
    tracing::info!(endpoint = %emulator.endpoint_url(), "cloudwatch-emulator listening");
    // A plain line on stdout that scripts can `eval` or grep.
    println!("AWS_ENDPOINT_URL_CLOUDWATCH={}", emulator.endpoint_url());

    shutdown_signal().await?;
    tracing::info!("shutting down");
    emulator.shutdown().await;
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot listen for SIGINT")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
