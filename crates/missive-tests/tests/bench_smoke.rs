//! The benchmark tool runs end to end against Missive (a tiny run; figures are not asserted).

mod common;

use clap::Parser;
use common::TestServer;

#[tokio::test]
async fn bench_tool_tiny_run_completes() {
    // The push scenario's gateway is on loopback.
    let server = TestServer::start_with(&[("MISSIVE_PUSH__GATEWAY_ALLOWED_RANGES", "[\"127.0.0.0/8\"]")]).await;
    let opts = missive_bench::Options::parse_from([
        "missive-bench",
        "--url",
        &server.base_url,
        "--secret",
        "test-secret",
        "--label",
        "smoke",
        "--messages",
        "16",
        "--wakeups",
        "3",
        "--rooms",
        "3",
        "--room-messages",
        "2",
        "--members",
        "5",
        "--devices",
        "3",
        "--users",
        "4",
        "--sliding-rooms",
        "3",
        "--sliding-updates",
        "2",
        "--paced",
        "5",
        "--purge-messages",
        "32",
        "--sector-users",
        "8",
        "--sector-rooms",
        "4",
        "--sector-rate",
        "10",
        "--sector-secs",
        "1",
    ]);
    let figures = missive_bench::Bench::new(opts).unwrap().run().await.expect("bench run");
    for scenario in [
        "send_1",
        "send_16",
        "wakeup",
        "initial_sync",
        "members",
        "e2ee",
        "many_users",
        "sliding_sync",
        "push_no_pushers",
        "push_dead_gateway",
        "purge",
        "sector_day",
    ] {
        assert!(figures.iter().any(|f| f.scenario == scenario), "scenario {scenario} measured");
    }
}
