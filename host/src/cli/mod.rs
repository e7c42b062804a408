//! The `postern` command line.

mod queue;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// Postern: a mail transfer agent whose policy runs as WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "postern", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ConfigArg {
    /// Configuration file.
    #[arg(
        short,
        long,
        default_value = "/etc/postern/postern.toml",
        env = "POSTERN_CONFIG"
    )]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon in the foreground (logs to stderr; SIGTERM stops, SIGHUP reloads).
    Run(ConfigArg),
    /// Validate a configuration file and print every problem with its key.
    Check(ConfigArg),
    /// Inspect the queue.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// List queued and held messages: ID, size, age, sender, recipients, last error.
    List(ConfigArg),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTERN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .init();
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("postern: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(a) => {
            init_logging();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("postern")
                .build()?;
            let res = rt.block_on(crate::server::run(&a.config));
            if let Err(e) = &res {
                tracing::error!("fatal: {e:#}");
            }
            // Blocking delivery threads must not keep the process alive.
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
            res.map(|()| ExitCode::SUCCESS)
        }
        Command::Check(a) => match Config::load(&a.config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listener(s), {} local domain(s), {} user(s), {} alias(es))",
                    a.config.display(),
                    c.listeners.len(),
                    c.local.domains.len(),
                    c.local.users.len(),
                    c.aliases.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Queue {
            command: QueueCommand::List(a),
        } => {
            let config = Config::load(&a.config)?;
            queue::list(&config)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
