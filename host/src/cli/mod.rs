//! The `postern` command line.

mod logsink;
mod plugin_bench;
mod plugin_test;
mod queue;
mod route;
mod user;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
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
    /// Validate a configuration file and print every problem with its key;
    /// also loads every plugin and checks its WIT and its config.
    Check(ConfigArg),
    /// Tell the running daemon to reload its config and plugins.
    Reload(ConfigArg),
    /// Show what addresses expand to and which transport takes each
    /// result (Postfix `postmap -q` / `sendmail -bv`); exit status 1 if
    /// any address is refused.
    Route {
        #[command(flatten)]
        config: ConfigArg,
        /// Recipient addresses.
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// Manage Postern's password file (SMTP AUTH users); changes apply at once.
    User {
        #[command(flatten)]
        config: ConfigArg,
        /// The password file (default: the `path` of the first passwd `[[auth]]`).
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(subcommand)]
        command: user::UserCommand,
    },
    /// Plugin development tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Inspect the queue.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// List queued and held messages: ID, size, age, sender, recipients, last error.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Also list the messages in the journal (marked `*`): being
        /// delivered to local mailboxes, or delivered and waiting for
        /// their bulk sync. Without it they are counted.
        #[arg(long)]
        journal: bool,
        /// One JSON object per message and line, with the fields of
        /// Postfix's `postqueue -j` (`queue_name`, `queue_id`,
        /// `arrival_time`, `message_size`, `sender`, `recipients` with
        /// `address` and, while deferred, `delay_reason`).
        #[arg(long)]
        json: bool,
    },
    /// Retry every deferred message now (asks the running daemon).
    Flush(ConfigArg),
    /// Release a held (quarantined) message into the queue for delivery
    /// now (`postsuper -H`; asks the running daemon).
    Release {
        #[command(flatten)]
        config: ConfigArg,
        /// Its queue ID (`postern queue list` marks held ones with `!`).
        id: String,
    },
    /// Delete a queued or held message for good (`postsuper -d`; asks the
    /// running daemon).
    Delete {
        #[command(flatten)]
        config: ConfigArg,
        /// Its queue ID.
        id: String,
    },
    /// Put a queued message on hold (`postsuper -h`; asks the running
    /// daemon, which waits for an attempt in flight to end).
    Hold {
        #[command(flatten)]
        config: ConfigArg,
        /// Its queue ID.
        id: String,
    },
    /// Deliver a message again now (`postsuper -r`): a held one is
    /// released, a deferred one stops waiting (asks the running daemon).
    Requeue {
        #[command(flatten)]
        config: ConfigArg,
        /// Its queue ID.
        id: String,
    },
    /// Print a queued or held message: its envelope, each recipient's
    /// state, and its content as it will be delivered (`postcat -q`).
    Show {
        #[command(flatten)]
        config: ConfigArg,
        /// Its queue ID.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Run a plugin against transaction fixtures (TOML) without a daemon.
    Test {
        /// The component (.wasm); default: the `plugin` key of each fixture.
        #[arg(long)]
        plugin: Option<PathBuf>,
        #[command(flatten)]
        cache: CacheArgs,
        /// Fixture files.
        #[arg(required = true)]
        fixtures: Vec<PathBuf>,
    },
    /// Micro-benchmark: instantiate and call cost, from a fixture's first case.
    Bench {
        /// The component (.wasm); default: the fixture's `plugin` key.
        #[arg(long)]
        plugin: Option<PathBuf>,
        #[command(flatten)]
        cache: CacheArgs,
        /// Calls to time.
        #[arg(long, default_value_t = 10000)]
        iterations: u32,
        /// Time only calls on a warm instance (for profiling the call path).
        #[arg(long)]
        warm_only: bool,
        /// Fixture file (its first case is the call to time).
        fixture: PathBuf,
    },
}

/// Where `plugin test` and `plugin bench` cache compiled plugins: nowhere
/// unless asked (compiled in memory), never in the working directory,
/// where a checkout could have planted machine code.
#[derive(Debug, clap::Args)]
struct CacheArgs {
    /// Cache compiled plugins in this directory (with --cache-key).
    #[arg(long, requires = "cache_key")]
    cache_dir: Option<PathBuf>,
    /// The key that seals the cached artifacts: a file of this user, mode
    /// 0600, made if missing. Artifacts it did not seal are compiled again.
    #[arg(long, requires = "cache_dir")]
    cache_key: Option<PathBuf>,
}

impl CacheArgs {
    fn setting(&self) -> crate::plugin::cache::CacheSetting {
        match (&self.cache_dir, &self.cache_key) {
            (Some(dir), Some(key)) => crate::plugin::cache::CacheSetting::Disk {
                dir: dir.clone(),
                key: key.clone(),
                create_key: true,
            },
            _ => crate::plugin::cache::CacheSetting::None,
        }
    }
}

/// Refuses what is not a queue ID (nothing else may reach the admin
/// socket's line protocol).
fn queue_id(id: &str) -> anyhow::Result<()> {
    if crate::spool::is_queue_id(id.trim()) {
        Ok(())
    } else {
        anyhow::bail!("{id:?} is not a queue ID")
    }
}

fn admin(config: &std::path::Path, command: &str) -> anyhow::Result<ExitCode> {
    let config = Config::load(config)?;
    let path = crate::server::admin::socket_path(&config.server.spool_dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = rt.block_on(crate::server::admin::send(&path, command))?;
    if let Some(err) = answer.strip_prefix("error: ") {
        eprintln!("postern: {err}");
        return Ok(ExitCode::FAILURE);
    }
    println!("{}", answer.strip_prefix("ok ").unwrap_or(&answer));
    Ok(ExitCode::SUCCESS)
}

/// Validates the config and builds a generation (plugins compiled, WIT and
/// entry configs checked), exactly as a start or reload would: the
/// configured certificates are read first, and with `server.user` root
/// then becomes that account, as the daemon does, so that what the daemon
/// could not read fails here too and the account's plugin cache is used.
fn check(path: &std::path::Path) -> anyhow::Result<String> {
    let config = Config::load(path)?;
    for w in config.warnings() {
        eprintln!("warning: {}: {}", w.key, w.message);
    }
    // The daemon reads the certificates as root when a default one is
    // configured, and as the account otherwise; check does the same (and
    // never makes the self-signed certificate a start would).
    let as_root = config.tls.default_pair().is_some();
    if as_root {
        crate::tls::Tls::check_files(&config).context("TLS set-up failed")?;
    }
    if config.server.user.is_none() {
        crate::server::account::refuse_root(&config, None)?;
    }
    if let Some(name) = &config.server.user
        && crate::privileges::euid() == 0
    {
        let account =
            crate::privileges::lookup(name).with_context(|| format!("server.user = {name:?}"))?;
        crate::server::account::refuse_root(&config, Some(&account))?;
        for w in crate::server::account::check(&config, &account)? {
            eprintln!("warning: {w}");
        }
        crate::privileges::drop_to(&account)
            .with_context(|| format!("cannot become server.user {name}"))?;
    }
    if !as_root {
        crate::tls::Tls::check_files(&config).context("TLS set-up failed")?;
    }
    let summary = format!(
        "{} listener(s), {} local domain(s), {} user(s), {} alias(es)",
        config.listeners.len(),
        config.local.domains.len(),
        config.local.users.len(),
        config.aliases.len()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (generation, runtime) = rt.block_on(async {
        let runtime = if config.plugins.is_empty() {
            None
        } else {
            // The daemon's cache, if its key is there and ours: check
            // never makes the key (a start does).
            let cache = crate::server::daemon_cache(&config, false);
            Some(crate::plugin::Runtime::new(&config.wasm, &cache, &config.plugins).await?)
        };
        let generation =
            crate::server::generation::Generation::build(config, 0, runtime.as_ref()).await?;
        anyhow::Ok((generation, runtime))
    })?;
    let (keys, virtual_domains) = generation.router.table_counts();
    let summary = if keys > 0 || virtual_domains > 0 {
        format!("{summary}, {keys} table key(s), {virtual_domains} virtual alias domain(s)")
    } else {
        summary
    };
    let (Some(runtime), false) = (runtime, generation.chains.plugins.is_empty()) else {
        return Ok(summary);
    };
    let plugins: Vec<String> = generation
        .chains
        .plugins
        .iter()
        .map(|p| format!("{} [{}]", p.def.name, p.hooks.names().join(",")))
        .collect();
    Ok(format!(
        "{summary}, {} plugin(s): {}, {} chain entries, {}",
        plugins.len(),
        plugins.join(" "),
        generation.chains.len(),
        runtime.pool()
    ))
}

/// Logs go to stderr through a writer thread, so that sessions never wait
/// for a log write ([`logsink`]). The guard writes what is left when
/// dropped at exit.
fn init_logging() -> anyhow::Result<logsink::Guard> {
    init_logging_at("info")
}

/// Logging to stderr, at `POSTERN_LOG` or else `default`.
fn init_logging_at(default: &str) -> anyhow::Result<logsink::Guard> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTERN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let (writer, guard) =
        logsink::start(std::io::stderr()).context("cannot start the log writer thread")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .with_ansi(false)
        .init();
    Ok(guard)
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
            let _log_guard = init_logging()?;
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
        Command::Check(a) => match init_logging_at("warn").and_then(|_log| check(&a.config)) {
            Ok(summary) => {
                println!("{}: ok ({summary})", a.config.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e:#}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Reload(a) => admin(&a.config, "reload"),
        Command::Route { config, addresses } => route::run(&config.config, &addresses),
        Command::User {
            config,
            file,
            command,
        } => {
            // The daemon reads the file as server.user: root's edits give
            // it to that account's group (mode 640).
            let loaded = Config::load(&config.config);
            let account = loaded
                .as_ref()
                .ok()
                .and_then(|c| c.server.user.as_deref())
                .and_then(|u| crate::privileges::lookup(u).ok());
            let path = match file {
                Some(f) => f,
                None => {
                    let c = loaded?;
                    c.auth
                        .iter()
                        .find(|a| matches!(a.backend, crate::config::AuthBackendKind::Passwd))
                        .and_then(|a| a.path.clone())
                        .ok_or_else(|| {
                            anyhow::anyhow!(
                                "{}: no [[auth]] with backend = \"passwd\"; give --file",
                                config.config.display()
                            )
                        })?
                }
            };
            let code = user::run(command, &path)?;
            if let Some(account) = account
                && crate::privileges::euid() == 0
                && path.exists()
                && !crate::privileges::can_read(&account, &path)
            {
                use std::os::unix::fs::PermissionsExt;
                std::os::unix::fs::chown(&path, None, Some(account.gid)).with_context(|| {
                    format!("cannot give {} to group {}", path.display(), account.gid)
                })?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640))?;
                eprintln!(
                    "{}: group {} may now read it (server.user {} reads it at every AUTH)",
                    path.display(),
                    account.gid,
                    account.name
                );
            }
            Ok(code)
        }
        Command::Queue {
            command: QueueCommand::Flush(a),
        } => admin(&a.config, "flush"),
        Command::Queue {
            command: QueueCommand::Release { config, id },
        } => {
            queue_id(&id)?;
            admin(&config.config, &format!("release {}", id.trim()))
        }
        Command::Queue {
            command: QueueCommand::Delete { config, id },
        } => {
            queue_id(&id)?;
            admin(&config.config, &format!("delete {}", id.trim()))
        }
        Command::Queue {
            command: QueueCommand::Hold { config, id },
        } => {
            queue_id(&id)?;
            admin(&config.config, &format!("hold {}", id.trim()))
        }
        Command::Queue {
            command: QueueCommand::Requeue { config, id },
        } => {
            queue_id(&id)?;
            admin(&config.config, &format!("requeue {}", id.trim()))
        }
        Command::Queue {
            command: QueueCommand::Show { config, id },
        } => {
            queue_id(&id)?;
            let config = Config::load(&config.config)?;
            queue::show(&config, id.trim())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            command:
                PluginCommand::Bench {
                    plugin,
                    cache,
                    iterations,
                    warm_only,
                    fixture,
                },
        } => {
            let fresh = if warm_only { 0 } else { iterations };
            plugin_bench::run(
                plugin.as_deref(),
                &fixture,
                &cache.setting(),
                fresh,
                iterations,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            command:
                PluginCommand::Test {
                    plugin,
                    cache,
                    fixtures,
                },
        } => {
            // Why a plugin failed (trap, time, memory) and what it logged
            // (host.log) go to stderr, as the daemon would log them.
            let _log_guard = init_logging_at("info")?;
            let failed = plugin_test::run(plugin.as_deref(), &fixtures, &cache.setting())?;
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Queue {
            command:
                QueueCommand::List {
                    config,
                    journal,
                    json,
                },
        } => {
            let config = Config::load(&config.config)?;
            if json {
                queue::list_json(&config)?;
            } else {
                queue::list(&config, journal)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
