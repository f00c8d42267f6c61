//! Data protection: the one table of the data classes Missive keeps (where each is
//! stored, on what legal basis, how long, what deleting it means, and what the code does
//! about it today), the retention settings with the presets of the services Missive
//! serves, and the record of processing activities (GDPR art. 30) printed from them.

pub mod export;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::Config;

/// A retention preset: the durations a service's privacy notice promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// Luxembourg's state messaging: content and metadata 2 years, connection logs
    /// 6 months, push data not kept, backups at most 1 month.
    Luxchat4gov,
    /// France's: content 36 months, connection data 1 year, profile 36 months after
    /// deactivation, inactive accounts deactivated after 6 months.
    Tchap,
}

/// The `[retention]` table: days each class of data is kept (unset: the preset's value,
/// or kept until deleted for another reason).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    pub preset: Option<Preset>,
    pub content_days: Option<u64>,
    pub metadata_days: Option<u64>,
    pub connection_logs_days: Option<u64>,
    pub media_days: Option<u64>,
    pub profile_after_deactivation_days: Option<u64>,
    pub inactive_deactivation_days: Option<u64>,
    pub backups_days: Option<u64>,
    pub audit_days: Option<u64>,
    /// The shortest message lifetime a room's `m.room.retention` may set, in days.
    pub room_lifetime_min_days: Option<u64>,
    /// The longest message lifetime a room's `m.room.retention` may set, in days.
    pub room_lifetime_max_days: Option<u64>,
}

/// The retention in force: the operator's values over the preset's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Effective {
    pub content_days: Option<u64>,
    pub metadata_days: Option<u64>,
    pub connection_logs_days: Option<u64>,
    pub media_days: Option<u64>,
    pub profile_after_deactivation_days: Option<u64>,
    pub inactive_deactivation_days: Option<u64>,
    pub backups_days: Option<u64>,
    pub audit_days: Option<u64>,
}

impl Retention {
    /// How long room history is kept, for the rooms service.
    pub fn history_policy(&self) -> crate::rooms::retention::HistoryPolicy {
        let effective = self.effective();
        crate::rooms::retention::HistoryPolicy {
            content_days: effective.content_days,
            metadata_days: effective.metadata_days,
            min_days: self.room_lifetime_min_days,
            max_days: self.room_lifetime_max_days,
        }
    }

    /// The values in force.
    pub fn effective(&self) -> Effective {
        let preset = match self.preset {
            Some(Preset::Luxchat4gov) => Effective {
                content_days: Some(730),
                metadata_days: Some(730),
                connection_logs_days: Some(183),
                media_days: Some(730),
                profile_after_deactivation_days: Some(0),
                inactive_deactivation_days: None,
                backups_days: Some(30),
                audit_days: Some(365),
            },
            Some(Preset::Tchap) => Effective {
                content_days: Some(1095),
                metadata_days: Some(1095),
                connection_logs_days: Some(365),
                media_days: Some(1095),
                profile_after_deactivation_days: Some(1095),
                inactive_deactivation_days: Some(183),
                backups_days: None,
                audit_days: Some(365),
            },
            None => Effective { audit_days: Some(365), ..Effective::default() },
        };
        Effective {
            content_days: self.content_days.or(preset.content_days),
            metadata_days: self.metadata_days.or(preset.metadata_days),
            connection_logs_days: self.connection_logs_days.or(preset.connection_logs_days),
            media_days: self.media_days.or(preset.media_days),
            profile_after_deactivation_days: self
                .profile_after_deactivation_days
                .or(preset.profile_after_deactivation_days),
            inactive_deactivation_days: self.inactive_deactivation_days.or(preset.inactive_deactivation_days),
            backups_days: self.backups_days.or(preset.backups_days),
            audit_days: self.audit_days.or(preset.audit_days),
        }
    }
}

/// One class of personal data.
pub struct DataClass {
    pub id: &'static str,
    pub name: &'static str,
    /// What it holds.
    pub data: &'static str,
    /// Database tables holding it.
    pub tables: &'static [&'static str],
    /// Files under the data directory holding it.
    pub files: &'static [&'static str],
    pub legal_basis: &'static str,
    /// Its retention among the configured values; `None`: the class has a fixed rule,
    /// given in `deletion`.
    pub retention: fn(&Effective) -> Option<Option<u64>>,
    /// What deleting it means.
    pub deletion: &'static str,
    /// What the code enforces today.
    pub enforcement: &'static str,
}

const PUBLIC_TASK: &str = "a task in the public interest (GDPR art. 6(1)(e)): the state's messaging service";
const LEGAL_OBLIGATION: &str = "a legal obligation (GDPR art. 6(1)(c)): keeping connection and operator records";

/// Every class of data Missive keeps. Each table of the schema belongs to one (a unit test
/// checks it), so that a new table cannot hold data no record names.
pub const DATA_CLASSES: &[DataClass] = &[
    DataClass {
        id: "profile",
        name: "Profile and settings",
        data: "display name, avatar, organisation, account flags, client settings (account data, filters)",
        tables: &["profiles", "users", "account_data", "filters"],
        files: &[],
        legal_basis: PUBLIC_TASK,
        retention: |r| Some(r.profile_after_deactivation_days),
        deletion: "after deactivation and the retention, the account is deleted: profile, settings and sessions go; the Matrix ID stays reserved",
        enforcement: "deactivated accounts are deleted after [lifecycle] deletion_after_secs or, unset, this retention (profile, settings, filters, keys, backups, receipts, invites, pending uploads, the IAM link; what stays is the reserved ID, the audit entries and connection logs the law requires, and the rooms' state); an account deleted after asking for erasure also loses the content of every message it sent and its uploads with their files; inactive accounts deactivated after [lifecycle] deactivate_inactive_after_secs or the preset's inactive_deactivation_days",
    },
    DataClass {
        id: "identifiers",
        name: "Account identifiers",
        data: "pseudonymous Matrix ID, subject at the IAM, e-mail address",
        tables: &["user_external_ids", "user_threepids"],
        files: &[],
        legal_basis: PUBLIC_TASK,
        retention: |r| Some(r.profile_after_deactivation_days),
        deletion: "the IAM subject and e-mail go with the account; the pseudonym stays reserved so that it is never given to another person",
        enforcement: "removed with the account (lifecycle job)",
    },
    DataClass {
        id: "content",
        name: "Message content",
        data: "messages (end-to-end encrypted in private rooms: ciphertext only), edits, reactions, reports of content",
        tables: &["events", "event_expiry", "reports"],
        files: &[],
        legal_basis: PUBLIC_TASK,
        retention: |r| Some(r.content_days),
        deletion: "the event's content is erased (as by a redaction); what the room's history needs to stay valid is kept without content",
        enforcement: "redactions and disappearing messages erase content at once; the hourly purge deletes messages older than their room's lifetime (the retention, or the room's `m.room.retention` within the operator's bounds), with their notifications and relations, and empties the room's last event, which the next one builds on (rooms and users under a legal hold excepted)",
    },
    DataClass {
        id: "metadata",
        name: "Room metadata",
        data: "rooms, memberships, room state (names, topics), receipts, notification counts, federation queue",
        tables: &[
            "rooms",
            "room_extremities",
            "state_groups",
            "room_current_state",
            "memberships",
            "room_aliases",
            "receipts",
            "event_push_actions",
            "push_exceptions",
            "notification_offsets",
            "invite_states",
            "partial_state_rooms",
            "federation_outbox",
        ],
        files: &[],
        legal_basis: PUBLIC_TASK,
        retention: |r| Some(r.metadata_days),
        deletion: "rows older than the retention go, but for the state the room needs to accept new events",
        enforcement: "the hourly purge empties replaced state events older than the retention (pruned as by a redaction: only what the auth rules read stays, never served to clients); the state in force stays while the room exists",
    },
    DataClass {
        id: "connection_logs",
        name: "Connection logs",
        data: "per device: IP address, user agent, last seen; each login and session end with its address and user agent; sessions and their tokens",
        tables: &["devices", "session_log", "access_tokens", "login_tokens", "sso_sessions", "openid_tokens"],
        files: &[],
        legal_basis: LEGAL_OBLIGATION,
        retention: |r| Some(r.connection_logs_days),
        deletion: "IP addresses and user agents older than the retention are erased; sessions end with logout or deactivation",
        enforcement: "the hourly purge erases devices' addresses and user agents last seen before the retention (but those of users under a legal hold); sessions end on logout, IAM logout and deactivation",
    },
    DataClass {
        id: "media",
        name: "Media",
        data: "uploaded files (encrypted attachments: ciphertext only), thumbnails, antivirus verdicts",
        tables: &["media", "media_thumbnails", "media_pending", "media_scans"],
        files: &["media/sha256/"],
        legal_basis: PUBLIC_TASK,
        retention: |r| Some(r.media_days),
        deletion: "the media item, its thumbnails, and the file when no other item shares it",
        enforcement: "the hourly purge deletes media older than the retention with their files (but those of users under a legal hold); operators delete media with their files",
    },
    DataClass {
        id: "push",
        name: "Push data",
        data: "pushers (gateway URL, pushkey, device name); notifications themselves",
        tables: &["pushers"],
        files: &[],
        legal_basis: PUBLIC_TASK,
        retention: |_| None,
        deletion: "a notification is never stored: it waits in memory until delivered, IDs and counts only unless the operator allows the full format; a pusher goes with its device",
        enforcement: "enforced by design (push/): nothing of a notification is written",
    },
    DataClass {
        id: "keys",
        name: "To-device messages and key material",
        data: "public device keys, one-time keys, cross-signing keys, encrypted key backups, messages between devices",
        tables: &[
            "device_keys",
            "one_time_keys",
            "fallback_keys",
            "cross_signing_keys",
            "device_list_changes",
            "to_device",
            "to_device_txns",
            "backup_versions",
            "backup_keys",
            "dehydrated_devices",
            "remote_device_lists",
        ],
        files: &[],
        legal_basis: PUBLIC_TASK,
        retention: |_| None,
        deletion: "kept while the device exists; to-device messages go once delivered; everything goes with the device",
        enforcement: "deleted with the device, at logout or deactivation",
    },
    DataClass {
        id: "audit",
        name: "Audit trail",
        data: "operator and IAM actions: who, what, on what, from which address, outcome; legal holds",
        tables: &["audit_log", "legal_holds"],
        files: &[],
        legal_basis: LEGAL_OBLIGATION,
        retention: |r| Some(r.audit_days),
        deletion: "entries older than the retention go; nothing else removes them",
        enforcement: "append-only for the server's code; the hourly purge deletes entries older than the retention",
    },
    DataClass {
        id: "backups",
        name: "Backups",
        data: "copies of the database and media made by the operator",
        tables: &[],
        files: &[],
        legal_basis: PUBLIC_TASK,
        retention: |r| Some(r.backups_days),
        deletion: "the operator's backup rotation; data purged here remains in backups until they expire",
        enforcement: "outside the server: declared for the record",
    },
    DataClass {
        id: "technical",
        name: "Server keys and secrets (no personal data)",
        data: "the server's signing keys, other servers' keys, secrets, OAuth client registrations",
        tables: &["server_signing_keys", "remote_server_keys", "server_secrets", "oauth_clients"],
        files: &["signing key", "content_scanner.key", "email_unsubscribe.key"],
        legal_basis: PUBLIC_TASK,
        retention: |_| None,
        deletion: "kept while the server runs",
        enforcement: "not personal data",
    },
];

/// Rows deleted per statement by the purge.
const PURGE_BATCH: i64 = 1000;
/// A day in ms: retention is set in days, the store keeps times in ms.
pub(crate) const DAY_MS: i64 = 86_400_000;

/// What one run of the purge deleted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeReport {
    /// Room history: messages deleted, events emptied for the graph.
    pub history: crate::rooms::retention::HistoryPurged,
    /// Devices whose IP address and user agent were erased.
    pub connection_logs_erased: u64,
    /// Audit entries deleted.
    pub audit_entries_deleted: u64,
    /// Media items deleted (with their files when nothing else used them).
    pub media_deleted: u64,
    /// Accounts whose messages and uploads were erased at their request.
    pub accounts_erased: u64,
}

/// The retention purge: deletes what is older than its class's retention, for the
/// classes it covers so far (connection data, the audit trail).
pub struct Purge {
    store: crate::store::Store,
    media: std::sync::Arc<crate::media::Media>,
    rooms: std::sync::Arc<crate::rooms::Rooms>,
    retention: Effective,
    /// One run at a time: the hourly run and an operator's never overlap.
    running: tokio::sync::Mutex<()>,
    /// Operators' purges of one room's history, by ID: `active`, `complete` or `failed`.
    room_purges: std::sync::Mutex<std::collections::HashMap<String, &'static str>>,
    /// What the purge has done since the server started.
    status: std::sync::Mutex<PurgeStatus>,
}

/// The purge's progress since the server started (`GET /_missive/admin/v1/retention`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeStatus {
    /// Whether a run is under way.
    pub running: bool,
    /// When the last run started and finished (ms), and what it did.
    pub last_started_ts: Option<i64>,
    pub last_finished_ts: Option<i64>,
    pub last_report: Option<PurgeReport>,
    /// Why the last run failed, if it did (the next one resumes it).
    pub last_error: Option<String>,
    /// Totals of every run since the server started.
    pub runs: u64,
    pub failed_runs: u64,
    pub events_deleted: u64,
    pub events_emptied: u64,
    pub connection_logs_erased: u64,
    pub audit_entries_deleted: u64,
    pub media_deleted: u64,
}

impl Purge {
    /// The purge of this configuration.
    pub fn new(
        store: crate::store::Store,
        media: std::sync::Arc<crate::media::Media>,
        rooms: std::sync::Arc<crate::rooms::Rooms>,
        retention: &Retention,
    ) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            store,
            media,
            rooms,
            retention: retention.effective(),
            running: tokio::sync::Mutex::new(()),
            room_purges: Default::default(),
            status: Default::default(),
        })
    }

    /// Erases what the deleted accounts that asked for erasure said and uploaded: the
    /// content of their messages in every room (the events stay, pruned, for the rooms'
    /// graph) and their media with the files; answers how many accounts. Until the
    /// deletion, as the spec has it, only users who join later see their messages redacted;
    /// those under a legal hold wait for its lifting.
    async fn erase_pending(&self) -> crate::error::Result<u64> {
        let pending = self.store.erasures_pending().await?;
        for user_id in &pending {
            let messages = self.rooms.erase_content(user_id).await?;
            let media = self.media.delete_uploads_of(user_id).await?;
            self.store.erasure_done(user_id).await?;
            tracing::info!(%user_id, messages, media, "account's messages and uploads erased");
        }
        Ok(pending.len() as u64)
    }

    /// Erases now what deleted accounts that asked for erasure said and uploaded (the
    /// lifecycle job calls it after deleting accounts; the hourly run would take it too).
    pub async fn erase_deleted(&self) -> crate::error::Result<u64> {
        let _one_at_a_time = self.running.lock().await;
        self.erase_pending().await
    }

    /// The purge's progress since the server started.
    pub fn status(&self) -> PurgeStatus {
        self.status.lock().expect("purge status lock").clone()
    }

    /// One run, as of `now` (ms).
    pub async fn run(&self, now: i64) -> crate::error::Result<PurgeReport> {
        let _one_at_a_time = self.running.lock().await;
        {
            let mut status = self.status.lock().expect("purge status lock");
            status.running = true;
            status.last_started_ts = Some(crate::store::now_ms());
        }
        let outcome = self.run_once(now).await;
        let mut status = self.status.lock().expect("purge status lock");
        status.running = false;
        status.last_finished_ts = Some(crate::store::now_ms());
        status.runs += 1;
        match &outcome {
            Ok(report) => {
                status.events_deleted += report.history.events_deleted;
                status.events_emptied += report.history.events_emptied;
                status.connection_logs_erased += report.connection_logs_erased;
                status.audit_entries_deleted += report.audit_entries_deleted;
                status.media_deleted += report.media_deleted;
                status.last_report = Some(report.clone());
                status.last_error = None;
            }
            Err(e) => {
                status.failed_runs += 1;
                status.last_error = Some(e.to_string());
            }
        }
        outcome
    }

    async fn run_once(&self, now: i64) -> crate::error::Result<PurgeReport> {
        let cutoff = |days: u64| now - (days as i64).saturating_mul(DAY_MS);
        let mut report = PurgeReport {
            accounts_erased: self.erase_pending().await?,
            history: self.rooms.purge_history(now).await?,
            ..Default::default()
        };
        if let Some(days) = self.retention.connection_logs_days {
            report.connection_logs_erased = self.store.erase_connection_data(cutoff(days), PURGE_BATCH).await?
                + self.store.delete_old_session_log(cutoff(days), PURGE_BATCH).await?;
        }
        if let Some(days) = self.retention.audit_days {
            report.audit_entries_deleted = self.store.delete_old_audit(cutoff(days), PURGE_BATCH).await?;
        }
        if let Some(days) = self.retention.media_days {
            report.media_deleted = self.media.purge_before(cutoff(days)).await?;
        }
        tracing::info!(
            events_deleted = report.history.events_deleted,
            events_emptied = report.history.events_emptied,
            connection_logs_erased = report.connection_logs_erased,
            audit_entries_deleted = report.audit_entries_deleted,
            media_deleted = report.media_deleted,
            "retention purge done"
        );
        Ok(report)
    }

    /// Starts an operator's purge of a room's messages older than `before` (ms) in the
    /// background (Synapse's `purge_history`); answers its ID. A room under a legal hold
    /// is refused at once.
    pub async fn start_room_purge(
        self: &std::sync::Arc<Self>,
        room_id: ruma::OwnedRoomId,
        before: i64,
        delete_local: bool,
    ) -> crate::error::Result<String> {
        if self.store.rooms_for_purge(Some(room_id.as_str())).await?.is_empty() {
            return Err(crate::error::Error::forbidden("the room is unknown or under a legal hold"));
        }
        let id = crate::accounts::random_string(16);
        self.room_purges.lock().expect("purge status lock").insert(id.clone(), "active");
        let purge = self.clone();
        let purge_id = id.clone();
        tokio::spawn(async move {
            let outcome = {
                let _one_at_a_time = purge.running.lock().await;
                purge.rooms.purge_room_before(&room_id, before, delete_local).await
            };
            let status = match outcome {
                Ok(_) => "complete",
                Err(e) => {
                    tracing::warn!(%room_id, error = %e, "room history purge failed");
                    "failed"
                }
            };
            purge.room_purges.lock().expect("purge status lock").insert(purge_id, status);
        });
        Ok(id)
    }

    /// The status of an operator's room purge started since the server started.
    pub fn room_purge_status(&self, id: &str) -> Option<&'static str> {
        self.room_purges.lock().expect("purge status lock").get(id).copied()
    }

    /// Runs the purge at start and then hourly, in the background.
    pub fn spawn(self: &std::sync::Arc<Self>) {
        let purge = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if let Err(e) = purge.run(crate::store::now_ms()).await {
                    tracing::warn!(error = %e, "retention purge failed; the next run resumes it");
                }
            }
        });
    }
}

fn days_text(days: Option<u64>) -> String {
    match days {
        None => "kept until deleted for another reason".to_owned(),
        Some(0) => "deleted at once".to_owned(),
        Some(365) => "1 year (365 days)".to_owned(),
        Some(d) if d % 365 == 0 => format!("{} years ({d} days)", d / 365),
        Some(d) if d >= 28 && (d as f64 / 30.44).fract() < 0.05 || d == 183 => {
            format!("{} months ({d} days)", (d as f64 / 30.44).round())
        }
        Some(d) => format!("{d} days"),
    }
}

/// The record of processing activities for this configuration, as JSON.
pub fn records(config: &Config) -> Value {
    let effective = config.retention.effective();
    let classes: Vec<Value> = DATA_CLASSES
        .iter()
        .map(|class| {
            let retention = (class.retention)(&effective);
            json!({
                "id": class.id,
                "name": class.name,
                "data": class.data,
                "stored_in": { "tables": class.tables, "files": class.files },
                "legal_basis": class.legal_basis,
                "retention_days": retention.flatten(),
                "retention": retention.map_or_else(|| "see deletion".to_owned(), days_text),
                "deletion": class.deletion,
                "enforcement": class.enforcement,
            })
        })
        .collect();
    json!({
        "server_name": config.server_name,
        "retention_preset": config.retention.preset,
        "retention": effective,
        "classes": classes,
    })
}

/// The record as Markdown, for a DPO's file.
pub fn records_markdown(config: &Config) -> String {
    let record = records(config);
    let preset = record["retention_preset"].as_str().unwrap_or("none");
    let mut out = format!(
        "# Record of processing activities (GDPR art. 30)\n\nServer: {}. Retention preset: {preset}.\n\n\
         | Data class | Data | Stored in | Legal basis | Retention | Deletion | Enforced today |\n\
         |---|---|---|---|---|---|---|\n",
        config.server_name
    );
    for class in record["classes"].as_array().into_iter().flatten() {
        let places: Vec<String> = class["stored_in"]["tables"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(class["stored_in"]["files"].as_array().into_iter().flatten())
            .filter_map(|v| v.as_str().map(|s| format!("`{s}`")))
            .collect();
        let cell = |v: &Value| v.as_str().unwrap_or_default().replace('|', "\\|");
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            cell(&class["name"]),
            cell(&class["data"]),
            if places.is_empty() { "outside the server".to_owned() } else { places.join(", ") },
            cell(&class["legal_basis"]),
            cell(&class["retention"]),
            cell(&class["deletion"]),
            cell(&class["enforcement"]),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_of_the_schema_belongs_to_a_data_class() {
        let classified: std::collections::HashSet<&str> =
            DATA_CLASSES.iter().flat_map(|c| c.tables.iter().copied()).collect();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        let mut created = std::collections::BTreeSet::new();
        let mut dropped = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let sql = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for (marker, set) in [("CREATE TABLE ", &mut created), ("DROP TABLE ", &mut dropped)] {
                for part in sql.split(marker).skip(1) {
                    let name: String = part.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    set.insert(name);
                }
            }
        }
        // Tables dropped once and created again are live; those only renamed into place
        // are named by their final name.
        let live: Vec<&String> = created
            .iter()
            .filter(|t| !dropped.contains(*t) || classified.contains(t.as_str()))
            .filter(|t| t.as_str() != "event_push_actions_new")
            .collect();
        let unclassified: Vec<&&String> = live.iter().filter(|t| !classified.contains(t.as_str())).collect();
        assert!(unclassified.is_empty(), "tables with no data class: {unclassified:?}");
    }

    #[test]
    fn presets_give_the_notices_durations_and_overrides_win() {
        let lux = Retention { preset: Some(Preset::Luxchat4gov), ..Retention::default() }.effective();
        assert_eq!((lux.content_days, lux.connection_logs_days, lux.backups_days), (Some(730), Some(183), Some(30)));
        let tchap = Retention { preset: Some(Preset::Tchap), connection_logs_days: Some(400), ..Retention::default() }
            .effective();
        assert_eq!(tchap.content_days, Some(1095));
        assert_eq!(tchap.profile_after_deactivation_days, Some(1095));
        assert_eq!(tchap.inactive_deactivation_days, Some(183));
        assert_eq!(tchap.connection_logs_days, Some(400), "the operator's value wins");
        assert_eq!(days_text(Some(730)), "2 years (730 days)");
        assert_eq!(days_text(Some(183)), "6 months (183 days)");
    }
}
