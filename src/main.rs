//! The `sessiongate` command: parse the CLI, set up logging, load and validate the
//! config once, then build the runtime and serve until SIGTERM / SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sessiongate::{Config, Server};
use tracing::{error, info};

/// mimalloc rather than the system allocator: after a flood of sessions is swept, glibc
/// kept the freed memory (RSS stayed at the flood's peak in the soak); mimalloc returns
/// freed pages to the system (benches/soak, README "Soak").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    version,
    about = "TLS reverse proxy that makes session fixation impossible for unchanged web apps"
)]
struct Cli {
    /// Config file to run with.
    #[arg(long, short, default_value = "config.toml", global = true)]
    config: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config, print the effective routes, and exit (non-zero on problems).
    Check,
    /// End every session of a user on a running sessiongate ("log out alice everywhere"),
    /// through its admin listener.
    Revoke {
        /// The user, as the login rules store it (`subject`), exactly.
        #[arg(long)]
        subject: String,
        /// The admin listener (`IP:PORT`); default: `admin.listen` of the config.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// Find out how an app handles sessions and logins (talking to the app itself, not
    /// through sessiongate), propose a config for it, and check that config by running a
    /// session fixation attack through an in-process sessiongate. Exit status 0 when the
    /// attack is blocked, 1 when it is not, 2 when the probe could not run.
    Probe(ProbeArgs),
    /// Check a config's login rules.
    Rules {
        #[command(subcommand)]
        action: RulesAction,
    },
}

#[derive(clap::Args)]
struct ProbeArgs {
    /// The app's base URL, e.g. http://127.0.0.1:8000.
    #[arg(long)]
    app: String,
    /// The path the login form posts to.
    #[arg(long)]
    login_path: String,
    /// The path that shows the login form (default: --login-path).
    #[arg(long)]
    login_page: Option<String>,
    /// The form field of the user name.
    #[arg(long, default_value = "username")]
    user_field: String,
    /// The form field of the password.
    #[arg(long, default_value = "password")]
    pass_field: String,
    /// A credential that signs in, as USER:PASSWORD.
    #[arg(long)]
    good: String,
    /// A credential that does not, as USER:PASSWORD.
    #[arg(long)]
    bad: String,
    /// The logout path (POST), for a logout rule.
    #[arg(long)]
    logout_path: Option<String>,
    /// A page that shows whether one is signed in (default: where the login redirects,
    /// else /).
    #[arg(long)]
    check: Option<String>,
}

#[derive(Subcommand)]
enum RulesAction {
    /// Replay a HAR file (exported by a browser's developer tools) through the config's
    /// routing, vault and rules, offline; one line per entry, and a warning for every
    /// request that looks like a login no rule catches (exit status 1 if there is one).
    Test {
        /// The HAR file.
        #[arg(long)]
        har: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Held to the end of `main`: dropping it flushes the lines still queued.
    let _log_writer = sessiongate::logging::init(matches!(cli.log_format, LogFormat::Json));
    match cli.command {
        Some(Command::Check) => check(&cli),
        Some(Command::Revoke { ref subject, admin }) => revoke(&cli, subject, admin),
        Some(Command::Probe(ref args)) => probe(args),
        Some(Command::Rules {
            action: RulesAction::Test { ref har },
        }) => rules_test(&cli, har),
        None => match run(&cli) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check(cli: &Cli) -> ExitCode {
    match Config::load(&cli.config) {
        Ok(config) => {
            println!("{}: OK", cli.config.display());
            print!("{}", config.describe());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The single-threaded runtime a command runs on; `None` (said on stderr) if it cannot
/// start.
fn tool_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            None
        }
    }
}

fn probe(args: &ProbeArgs) -> ExitCode {
    let cred = |what: &str, s: &str| match s.split_once(':') {
        Some((u, p)) => Ok((u.to_owned(), p.to_owned())),
        None => Err(format!("--{what} takes USER:PASSWORD, got {s:?}")),
    };
    let (good, bad) = match (cred("good", &args.good), cred("bad", &args.bad)) {
        (Ok(g), Ok(b)) => (g, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let opts = sessiongate::tools::probe::ProbeOptions {
        app: args.app.clone(),
        login_path: args.login_path.clone(),
        login_page: args.login_page.clone(),
        user_field: args.user_field.clone(),
        pass_field: args.pass_field.clone(),
        good,
        bad,
        logout_path: args.logout_path.clone(),
        check: args.check.clone(),
    };
    let Some(runtime) = tool_runtime() else {
        return ExitCode::from(2);
    };
    match runtime.block_on(sessiongate::tools::probe::run(&opts)) {
        Ok(report) => {
            print!("{report}");
            match report.blocked {
                true => ExitCode::SUCCESS,
                false => ExitCode::FAILURE,
            }
        }
        Err(e) => {
            eprintln!("probe failed: {e}");
            ExitCode::from(2)
        }
    }
}

fn rules_test(cli: &Cli, har: &std::path::Path) -> ExitCode {
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let Some(runtime) = tool_runtime() else {
        return ExitCode::from(2);
    };
    match runtime.block_on(sessiongate::tools::replay::run(&config, har)) {
        Ok(report) => {
            print!("{}", report.text);
            match report.warnings {
                0 => ExitCode::SUCCESS,
                _ => ExitCode::FAILURE,
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

fn revoke(cli: &Cli, subject: &str, admin: Option<std::net::SocketAddr>) -> ExitCode {
    // The config names the listener and the token; with --admin it is read if it can be.
    let config = Config::load(&cli.config);
    let addr = match (admin, &config) {
        (Some(a), _) => a,
        (None, Ok(c)) => match c.admin.listen {
            Some(a) => a,
            None => {
                eprintln!(
                    "{}: no [admin] listen address; give one with --admin IP:PORT",
                    cli.config.display()
                );
                return ExitCode::FAILURE;
            }
        },
        (None, Err(e)) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let token = config.ok().and_then(|c| c.admin.token);
    let Some(runtime) = tool_runtime() else {
        return ExitCode::from(2);
    };
    match runtime.block_on(sessiongate::admin::request_revoke(
        addr,
        subject,
        token.as_ref(),
    )) {
        Ok(answer) => {
            print!("{answer}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("revoking the sessions of {subject:?} through {addr} failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.config)?;
    // One worker needs no work stealing: the single-threaded scheduler skips its
    // cross-thread queues and atomics.
    let mut builder = if config.server.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.server.worker_threads);
        b
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let server = Server::bind(config).await?;
        tokio::spawn(reload_on_sighup(cli.config.clone(), server.handle()));
        server.run(shutdown_signal()).await;
        info!("stopped");
        anyhow::Ok(())
    })
}

/// SIGHUP re-reads the config file and the certificates it names. A config that fails
/// validation (or changes what needs a restart) is rejected with a log line, and the
/// running one keeps serving.
async fn reload_on_sighup(path: PathBuf, handle: sessiongate::ServerHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        error!("cannot install the SIGHUP handler; reload needs a restart");
        return;
    };
    while hup.recv().await.is_some() {
        info!(config = %path.display(), "SIGHUP received: reloading");
        let result = match Config::load(&path) {
            Ok(config) => handle.reload(config).await.map_err(anyhow::Error::from),
            Err(e) => {
                handle
                    .metrics
                    .reloads
                    .get_or_create(&sessiongate::telemetry::OutcomeLabel { outcome: "failure" })
                    .inc();
                Err(e.into())
            }
        };
        match result {
            Ok(()) => info!("config reloaded"),
            Err(e) => error!("reload rejected, the previous config keeps serving: {e:#}"),
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}
