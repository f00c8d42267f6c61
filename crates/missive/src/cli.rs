//! The `missive` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{api::ruma::percent_encode, config::Config};

#[derive(Parser)]
#[command(name = "missive", version, about = "A Matrix homeserver for public administrations")]
struct Cli {
    /// Configuration file (TOML). Without one, a local trial server runs on SQLite.
    #[arg(long, short, env = "MISSIVE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the homeserver (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Print the effective configuration and exit.
    CheckConfig,
    /// Operator commands, through the running server's admin API.
    Admin {
        /// Base URL of the server's client API (default: the configured listener).
        #[arg(long, env = "MISSIVE_ADMIN_URL")]
        url: Option<String>,
        /// Access token of a server admin (every command but `records`).
        #[arg(long, env = "MISSIVE_ADMIN_TOKEN")]
        token: Option<String>,
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// The servers this one sends to: failing since, retry interval, queued PDUs.
    Federation {
        /// End the backoff of this destination: its queue is retried now.
        #[arg(long)]
        reset: Option<String>,
    },
    /// An account's lifecycle.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// The media repository and its antivirus.
    Media {
        #[command(subcommand)]
        action: MediaAction,
    },
    /// The record of processing activities (GDPR art. 30) for this configuration: every
    /// class of data, where it is stored, its legal basis and retention. Needs no server.
    Records {
        /// `markdown` or `json`.
        #[arg(long, default_value = "markdown")]
        format: String,
    },
    /// Legal holds: data the retention purge keeps until they are lifted.
    Hold {
        #[command(subcommand)]
        action: HoldAction,
    },
    /// The retention purge: its progress, a run now, a room's history purged.
    Retention {
        #[command(subcommand)]
        action: RetentionAction,
    },
    /// The transparency statistics: accounts, daily and monthly active users, messages per
    /// day, storage, per organisation.
    Stats,
    /// The audit trail of operator actions, newest first.
    Audit {
        /// Only the actions of this account.
        #[arg(long)]
        actor: Option<String>,
        /// Only the actions on this target (a user ID, a server, `server/media`).
        #[arg(long)]
        target: Option<String>,
        /// How many entries.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum MediaAction {
    /// A user's uploads, newest first, with the antivirus's verdicts.
    List { user_id: String },
    /// One media item (`mxc://server/id`): type, size, uploader, verdict.
    Show { uri: String },
    /// Keep a media item from being served to anyone.
    Quarantine { uri: String },
    /// Serve a quarantined item again (a file found infected is then taken as clean).
    Release { uri: String },
    /// Delete a media item, its thumbnails and its file.
    Delete { uri: String },
    /// The antivirus's counts: clean, infected, waiting for a scan, quarantined.
    Scans,
}

#[derive(Subcommand)]
enum HoldAction {
    /// Every hold, active and lifted.
    List,
    /// Place a hold on a user's or a room's data.
    Place {
        #[arg(long, conflicts_with = "room", required_unless_present = "room")]
        user: Option<String>,
        #[arg(long)]
        room: Option<String>,
        /// Why (e.g. the request of an investigating judge).
        #[arg(long)]
        reason: String,
        /// The reference of the request.
        #[arg(long)]
        reference: String,
    },
    /// Lift a hold: the purge may take the data again.
    Lift { id: i64 },
}

#[derive(Subcommand)]
enum RetentionAction {
    /// What the purge has done since the server started, and whether it runs now.
    Status,
    /// Run the purge now (it also runs hourly) and print what it deleted.
    Run,
    /// Purge one room's messages older than a time (ms since the epoch); local users'
    /// messages only with `--delete-local`. Prints the purge's ID
    /// (`_synapse/admin/v1/purge_history_status/<id>` tells when it is done).
    PurgeRoom {
        room_id: String,
        #[arg(long)]
        before_ts: i64,
        #[arg(long)]
        delete_local: bool,
    },
}

/// The server name and media ID of an `mxc://` URI, as path segments.
fn mxc_path(uri: &str) -> anyhow::Result<String> {
    let (server, id) = uri
        .strip_prefix("mxc://")
        .and_then(|rest| rest.split_once('/'))
        .ok_or_else(|| anyhow::anyhow!("{uri} is not an mxc:// URI"))?;
    Ok(format!("{}/{}", percent_encode(server), percent_encode(id)))
}

#[derive(Subcommand)]
enum UserAction {
    /// Show the account: flags, identities at the IAM, e-mail, organisation.
    Show { user_id: String },
    /// Suspend the account: its sessions and logins are refused until it is reactivated.
    Suspend { user_id: String },
    /// End a suspension: the sessions work again as they were.
    Reactivate { user_id: String },
    /// Deactivate the account: sessions and keys removed, rooms left.
    Deactivate {
        user_id: String,
        /// Also hide its messages from those who join rooms later.
        #[arg(long)]
        erase: bool,
    },
    /// Bring a deactivated account back before its deletion.
    Restore { user_id: String },
    /// Everything the server holds about the user (GDPR art. 15 and 20), written to a file.
    Export {
        user_id: String,
        /// `json` or `html`.
        #[arg(long, default_value = "json")]
        format: String,
        /// Where to write it (default: standard output).
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

/// Calls the admin API of a running server and prints the answer.
async fn admin(config: &Config, url: Option<String>, token: Option<&str>, command: AdminCommand) -> anyhow::Result<()> {
    if let AdminCommand::Records { format } = &command {
        match format.as_str() {
            "json" => println!("{}", serde_json::to_string_pretty(&crate::privacy::records(config))?),
            "markdown" => print!("{}", crate::privacy::records_markdown(config)),
            other => anyhow::bail!("unknown format {other}: markdown or json"),
        }
        return Ok(());
    }
    let token = token.ok_or_else(|| anyhow::anyhow!("--token (or MISSIVE_ADMIN_TOKEN) is required"))?;
    let base = url.unwrap_or_else(|| format!("http://{}", config.listen));
    let client = reqwest::Client::new();
    let request = match command {
        AdminCommand::Federation { reset: Some(destination) } => {
            client.post(format!("{base}/_synapse/admin/v1/federation/destinations/{destination}/reset_connection"))
        }
        AdminCommand::Federation { reset: None } => {
            client.get(format!("{base}/_synapse/admin/v1/federation/destinations"))
        }
        AdminCommand::User { action } => {
            let user_path = |id: &str| format!("{base}/_synapse/admin/v2/users/{}", percent_encode(id));
            match action {
                UserAction::Show { user_id } => client.get(user_path(&user_id)),
                UserAction::Suspend { user_id } => client
                    .put(user_path(&user_id))
                    .header("content-type", "application/json")
                    .body(serde_json::json!({ "locked": true }).to_string()),
                UserAction::Reactivate { user_id } => client
                    .put(user_path(&user_id))
                    .header("content-type", "application/json")
                    .body(serde_json::json!({ "locked": false }).to_string()),
                UserAction::Deactivate { user_id, erase } => client
                    .post(format!("{base}/_synapse/admin/v1/deactivate/{}", percent_encode(&user_id)))
                    .header("content-type", "application/json")
                    .body(serde_json::json!({ "erase": erase }).to_string()),
                UserAction::Restore { user_id } => client
                    .put(user_path(&user_id))
                    .header("content-type", "application/json")
                    .body(serde_json::json!({ "deactivated": false }).to_string()),
                UserAction::Export { user_id, format, output } => {
                    let url = format!(
                        "{base}/_missive/admin/v1/users/{}/export?format={}",
                        percent_encode(&user_id),
                        percent_encode(&format)
                    );
                    let response = client.get(url).bearer_auth(token).send().await?;
                    let status = response.status();
                    let bytes = response.bytes().await?;
                    anyhow::ensure!(
                        status.is_success(),
                        "the server answered {status}: {}",
                        String::from_utf8_lossy(&bytes)
                    );
                    match output {
                        Some(path) => std::fs::write(&path, &bytes)?,
                        None => std::io::Write::write_all(&mut std::io::stdout(), &bytes)?,
                    }
                    return Ok(());
                }
            }
        }
        AdminCommand::Media { action } => {
            let media = format!("{base}/_synapse/admin/v1/media");
            match action {
                MediaAction::List { user_id } => {
                    client.get(format!("{base}/_synapse/admin/v1/users/{}/media", percent_encode(&user_id)))
                }
                MediaAction::Show { uri } => client.get(format!("{media}/{}", mxc_path(&uri)?)),
                MediaAction::Quarantine { uri } => client.post(format!("{media}/quarantine/{}", mxc_path(&uri)?)),
                MediaAction::Release { uri } => client.post(format!("{media}/unquarantine/{}", mxc_path(&uri)?)),
                MediaAction::Delete { uri } => client.delete(format!("{media}/{}", mxc_path(&uri)?)),
                MediaAction::Scans => client.get(format!("{base}/_missive/admin/v1/media/scans")),
            }
        }
        AdminCommand::Stats => client.get(format!("{base}/_missive/admin/v1/statistics")),
        AdminCommand::Retention { action } => match action {
            RetentionAction::Status => client.get(format!("{base}/_missive/admin/v1/retention")),
            RetentionAction::Run => client
                .post(format!("{base}/_missive/admin/v1/retention/purge"))
                .header("content-type", "application/json")
                .body("{}"),
            RetentionAction::PurgeRoom { room_id, before_ts, delete_local } => client
                .post(format!("{base}/_synapse/admin/v1/purge_history/{}", percent_encode(&room_id)))
                .header("content-type", "application/json")
                .body(
                    serde_json::json!({ "purge_up_to_ts": before_ts, "delete_local_events": delete_local }).to_string(),
                ),
        },
        AdminCommand::Hold { action } => {
            let holds = format!("{base}/_missive/admin/v1/legal_holds");
            match action {
                HoldAction::List => client.get(holds),
                HoldAction::Place { user, room, reason, reference } => client
                    .post(holds)
                    .header("content-type", "application/json")
                    .body(
                        serde_json::json!({ "user_id": user, "room_id": room, "reason": reason, "reference": reference })
                            .to_string(),
                    ),
                HoldAction::Lift { id } => client.delete(format!("{holds}/{id}")),
            }
        }
        // Printed above, from the configuration alone.
        AdminCommand::Records { .. } => return Ok(()),
        AdminCommand::Audit { actor, target, limit } => {
            let mut url = url::Url::parse(&format!("{base}/_missive/admin/v1/audit"))?;
            url.query_pairs_mut().append_pair("limit", &limit.to_string());
            if let Some(actor) = actor {
                url.query_pairs_mut().append_pair("actor", &actor);
            }
            if let Some(target) = target {
                url.query_pairs_mut().append_pair("target", &target);
            }
            client.get(url)
        }
    };
    let response = request.bearer_auth(token).send().await?;
    let status = response.status();
    let body: serde_json::Value = serde_json::from_slice(&response.bytes().await?).unwrap_or_default();
    println!("{}", serde_json::to_string_pretty(&body)?);
    anyhow::ensure!(status.is_success(), "the server answered {status}");
    Ok(())
}

/// Large allocations (each Argon2id hash takes `memory_kib`, 19 MiB by default) go straight
/// to `mmap` and back to the system when freed. With glibc's adaptive threshold they would
/// stay in per-thread arenas, and resident memory would grow with every blocking thread that
/// ever hashed a password.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters; called once before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// Every few seconds, hands the free memory inside glibc's arenas back to the system. A big
/// sync response is built and freed in pieces spread over the heap; glibc only returns the
/// heap's top on its own, so without this the resident size stays at the largest response
/// ever built.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn spawn_allocator_trim() {
    tokio::spawn(async {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            // SAFETY: malloc_trim only releases free pages; it is thread-safe.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    });
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn spawn_allocator_trim() {}

/// Entry point of the binary.
pub fn main() {
    tune_allocator();
    let cli = Cli::parse();
    // The configuration first: it says how to log (its errors go to stderr as they are).
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("missive: {e}");
            std::process::exit(2);
        }
    };
    // ruma's state resolution logs every authorised event at INFO: a line per message is
    // noise at the default level, and costs CPU on every send.
    let filter = tracing_subscriber::EnvFilter::try_from_env("MISSIVE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,tower_http=warn,ruma_state_res=warn"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log_format {
        // One JSON object per line, for log collectors.
        crate::config::LogFormat::Json => logs.json().with_current_span(true).init(),
        // Colour codes only for a terminal: a log file or journal gets plain text.
        crate::config::LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("missive: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => {
                spawn_allocator_trim();
                crate::server::run(config).await
            }
            Command::Migrate => crate::server::build(config).await.map(|_| ()),
            Command::CheckConfig => {
                println!("{config:#?}");
                Ok(())
            }
            Command::Admin { url, token, command } => admin(&config, url, token.as_deref(), command).await,
        }
    });
    if let Err(e) = result {
        eprintln!("missive: {e:#}");
        std::process::exit(1);
    }
}
