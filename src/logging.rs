//! Log set-up: human-readable or JSON lines on stderr, filtered by `RUST_LOG` (default `info`).
//!
//! stdout is reserved for reports (and, for `authorized-keys`, key lines only), so logs must
//! never go there.
//!
//! Start-up cost matters: `authorized-keys` runs at every SSH login. Parsing a filter directive
//! compiles regular expressions (milliseconds), so that only happens when `RUST_LOG` asks for it;
//! the default is a plain level filter.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. Called once, from `main`.
pub fn init(format: LogFormat) {
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|d| !d.trim().is_empty());
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: journald, cron mail and CI logs get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let layer: Box<dyn tracing_subscriber::Layer<_> + Send + Sync> = match format {
        LogFormat::Text => Box::new(layer),
        LogFormat::Json => Box::new(layer.json()),
    };
    let registry = tracing_subscriber::registry().with(layer);
    let _ = match directives {
        Some(directives) => registry.with(EnvFilter::new(directives)).try_init(),
        None => registry.with(LevelFilter::INFO).try_init(),
    };
}
