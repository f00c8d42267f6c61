//! Every operator action is in the audit trail: who acted, on what, from where, with what
//! outcome; refusals too; the trail is read through the admin API and `missive admin audit`,
//! and nothing in the API removes from it.

mod common;

use common::{TestServer, register_admin};
use serde_json::{Value, json};

#[tokio::test]
async fn every_operator_action_is_audited_with_its_actor() {
    let server = TestServer::start().await;
    let admin = register_admin(&server, "operator").await;
    let operator = format!("@operator:{}", server.server_name);
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    let suspend = format!("/_synapse/admin/v1/suspend/{}", alice.user_id);
    let (status, _) = server.call("PUT", &suspend, Some(&admin), Some(json!({ "suspend": true }))).await;
    assert_eq!(status, 200);
    // Someone who is no operator tries: refused, and recorded.
    let (status, _) =
        server.call("GET", &format!("/_synapse/admin/v2/users/{}", alice.user_id), Some(&bob.access_token), None).await;
    assert_eq!(status, 403);
    let (status, _) = server.call("GET", "/_missive/admin/v1/audit", Some(&bob.access_token), None).await;
    assert_eq!(status, 403, "only operators read the trail");

    let (status, trail) = server.call("GET", "/_missive/admin/v1/audit", Some(&admin), None).await;
    assert_eq!(status, 200, "{trail}");
    let entries = trail["entries"].as_array().unwrap();
    let find = |actor: &str, action: &str| -> Value {
        entries
            .iter()
            .find(|e| e["actor"] == actor && e["action"] == action)
            .cloned()
            .unwrap_or_else(|| panic!("no {actor} {action} in {trail}"))
    };
    let suspension = find(&operator, "PUT /_synapse/admin/v1/suspend/{user_id}");
    assert_eq!(suspension["target"], alice.user_id.as_str());
    assert_eq!(suspension["status"], 200);
    assert_eq!(suspension["ip"], "127.0.0.1");
    assert!(suspension["ts"].as_i64().unwrap() > 0);
    let refused = find(&bob.user_id, "GET /_synapse/admin/v2/users/{user_id}");
    assert_eq!((refused["status"].clone(), refused["target"].clone()), (json!(403), json!(alice.user_id)));
    find(&bob.user_id, "GET /_missive/admin/v1/audit");
    let registration = find("shared-secret", "POST /_synapse/admin/v1/register");
    assert_eq!(registration["status"], 200);
    assert!(!trail.to_string().contains("\"pw\""), "no request body is kept");

    // Filtered by actor; nothing in the API deletes from it.
    let path = format!("/_missive/admin/v1/audit?actor={}", bob.user_id.replace('@', "%40").replace(':', "%3A"));
    let (_, bobs) = server.call("GET", &path, Some(&admin), None).await;
    assert!(bobs["entries"].as_array().unwrap().iter().all(|e| e["actor"] == bob.user_id.as_str()), "{bobs}");
    assert_eq!(bobs["entries"].as_array().unwrap().len(), 2);
    let (status, _) = server.call("DELETE", "/_missive/admin/v1/audit", Some(&admin), None).await;
    assert_eq!(status, 405);

    // The command line reads it through the running server.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_missive-under-test"));
    command.args(["admin", "--url", &server.base_url, "--token", &admin, "audit", "--target", &alice.user_id]);
    // The test's own settings (MISSIVE_TEST_POSTGRES) are no config keys.
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("MISSIVE_")) {
        command.env_remove(key);
    }
    let output = command.output().expect("run missive admin audit");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let actions: Vec<&Value> = printed["entries"].as_array().unwrap().iter().map(|e| &e["action"]).collect();
    assert!(actions.contains(&&json!("PUT /_synapse/admin/v1/suspend/{user_id}")), "{printed}");
}

/// Runs `missive admin records` with the given environment, no server.
fn records(env: &[(&str, &str)], format: &str) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_missive-under-test"));
    command.args(["admin", "records", "--format", format]);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("MISSIVE_")) {
        command.env_remove(key);
    }
    command.envs(env.iter().copied());
    let output = command.output().expect("run missive admin records");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_record_of_processing_follows_the_configured_retention() {
    let tchap: Value = serde_json::from_str(&records(&[("MISSIVE_RETENTION__PRESET", "tchap")], "json")).unwrap();
    let class = |record: &Value, id: &str| {
        record["classes"].as_array().unwrap().iter().find(|c| c["id"] == id).cloned().unwrap()
    };
    assert_eq!(class(&tchap, "content")["retention_days"], 1095);
    assert_eq!(class(&tchap, "connection_logs")["retention_days"], 365);
    assert_eq!(class(&tchap, "profile")["retention_days"], 1095);
    assert_eq!(tchap["retention"]["inactive_deactivation_days"], 183);
    assert!(class(&tchap, "content")["stored_in"]["tables"].as_array().unwrap().contains(&json!("events")));
    assert!(class(&tchap, "media")["stored_in"]["files"].as_array().unwrap().contains(&json!("media/sha256/")));

    let lux =
        records(&[("MISSIVE_RETENTION__PRESET", "luxchat4gov"), ("MISSIVE_RETENTION__CONTENT_DAYS", "365")], "json");
    let lux: Value = serde_json::from_str(&lux).unwrap();
    assert_eq!(class(&lux, "content")["retention_days"], 365, "the operator's value wins");
    assert_eq!(class(&lux, "connection_logs")["retention_days"], 183);
    assert_eq!(class(&lux, "backups")["retention_days"], 30);
    assert!(class(&lux, "push")["deletion"].as_str().unwrap().contains("never stored"));

    let markdown = records(&[("MISSIVE_RETENTION__PRESET", "tchap")], "markdown");
    assert!(markdown.starts_with("# Record of processing activities"), "{markdown}");
    assert!(markdown.contains("| Connection logs |") && markdown.contains("1 year (365 days)"), "{markdown}");
    // A preset that does not exist stops the command with a clear error.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_missive-under-test"));
    command.args(["admin", "records"]).env("MISSIVE_RETENTION__PRESET", "forever");
    assert!(!command.output().unwrap().status.success());
}
