//! ClickHouse's official clients, unchanged, against a real 2-node cluster: clickhouse-connect
//! (Python, its default Native format and lz4 compression) and @clickhouse/client (Node.js,
//! JSON formats, gzip). Each runs a scenario in `tests/clients/` that checks every answer
//! against values it computed itself; `scripts/prereqs.sh --for-tests` installs both clients.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use tandem_tests::Cluster;

const PASSWORD: &str = "client-secret-7";
const ADMIN_PASSWORD: &str = "admin-secret-7";

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients").join(name)
}

/// A 2-node cluster with a user `app` who may create tables, insert and read: the clients sign
/// in as that user, as an application would.
async fn cluster() -> (Cluster, String) {
    let env = vec![("TANDEM_ADMIN_PASSWORD".to_string(), ADMIN_PASSWORD.to_string())];
    let mut cluster = Cluster::start_with(2, Vec::new(), env).await.unwrap();
    cluster.nodes[0].sign_in("default", ADMIN_PASSWORD);
    let admin = &cluster.nodes[0];
    admin.sql(&format!("CREATE USER app IDENTIFIED BY '{PASSWORD}'")).await;
    admin.sql("GRANT SELECT, INSERT, CREATE ON *.* TO app").await;
    let nodes = cluster
        .nodes
        .iter()
        .map(|n| n.url.trim_start_matches("http://").trim_end_matches('/').to_string())
        .collect::<Vec<_>>()
        .join(",");
    (cluster, nodes)
}

/// Runs a scenario and returns what it printed last (a JSON line with its count of checks).
fn run(mut command: Command, nodes: &str, what: &str) -> serde_json::Value {
    let started = Instant::now();
    let output = command
        .env("TANDEM_NODES", nodes)
        .env("TANDEM_USER", "app")
        .env("TANDEM_PASSWORD", PASSWORD)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the {what} scenario: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the {what} scenario failed:\n{stdout}\n{stderr}");
    let report: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("the {what} scenario printed no report:\n{stdout}\n{stderr}"));
    eprintln!("{what}: {report} ({:.1} s with its interpreter)", started.elapsed().as_secs_f64());
    report
}

#[tokio::test]
async fn clickhouse_connect_works_unchanged() {
    let python = std::env::var("TANDEM_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let (_cluster, nodes) = cluster().await;
    let mut command = Command::new(&python);
    command.arg(scenario("clickhouse_connect_scenario.py"));
    let report = run(command, &nodes, "clickhouse-connect");
    assert!(report["checks"].as_u64().unwrap_or(0) >= 40, "{report}");
}

#[tokio::test]
async fn node_client_works_unchanged() {
    let modules = std::env::var("TANDEM_TEST_NODE_MODULES").unwrap_or_else(|_| {
        format!("{}/.cache/tandem-test-node/node_modules", std::env::var("HOME").unwrap_or_default())
    });
    assert!(
        Path::new(&modules).join("@clickhouse/client").exists(),
        "@clickhouse/client is not installed under {modules} (scripts/prereqs.sh --for-tests installs it)"
    );
    let (_cluster, nodes) = cluster().await;
    let mut command = Command::new("node");
    command.arg(scenario("node_client_scenario.cjs")).env("NODE_PATH", &modules);
    let report = run(command, &nodes, "@clickhouse/client");
    assert!(report["checks"].as_u64().unwrap_or(0) >= 15, "{report}");
}
