//! Users and grants on real clusters: who gets in (401), what they may do (403, with nothing
//! changed), how fast a change reaches the other nodes, how a node open to the network gets its
//! first user, and that no password ever reaches a log line, `/metrics` or `--check-config`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tandem_tests::{Cluster, Etcd, free_port, tandem_binary};

const ADMIN_PASSWORD: &str = "admin-pw-7f3a9c";
const READER_PASSWORD: &str = "reader-pw-51be02";

/// Polls `check` until it holds; returns how long that took. Panics after `timeout`.
async fn until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < timeout, "{what}: not after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_grants_hold_across_a_three_node_cluster() {
    let env = vec![("TANDEM_ADMIN_PASSWORD".to_string(), ADMIN_PASSWORD.to_string())];
    let mut cluster = Cluster::start_with(3, Vec::new(), env).await.unwrap();
    for node in &mut cluster.nodes {
        node.sign_in("default", ADMIN_PASSWORD);
    }
    let (n1, n2, n3) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);

    // Who gets in.
    let anonymous = n1.request_with("SELECT 1", |r| r).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    assert!(anonymous.header("www-authenticate").is_some_and(|h| h.starts_with("Basic")));
    let wrong_password = n1.request_as("default", "not it", "SELECT 1").await;
    let unknown_user = n1.request_as("nobody", ADMIN_PASSWORD, "SELECT 1").await;
    assert_eq!((wrong_password.status, unknown_user.status), (401, 401));
    assert_eq!(wrong_password.text(), unknown_user.text(), "an unknown user and a wrong password answer alike");
    assert_eq!(n1.request_as("default", ADMIN_PASSWORD, "SELECT 1").await.ok().text().trim(), "1");
    let by_headers = n2
        .request_with("SELECT 2", |r| {
            r.header("X-ClickHouse-User", "default").header("X-ClickHouse-Key", ADMIN_PASSWORD)
        })
        .await;
    assert_eq!(by_headers.ok().text().trim(), "2");
    let by_params =
        n3.request_with("SELECT 3", |r| r.query(&[("user", "default"), ("password", ADMIN_PASSWORD)])).await;
    assert_eq!(by_params.ok().text().trim(), "3");
    assert!(n1.metric("tandem_http_auth_failures_total").await >= 3.0);

    // A reader: SELECT on one table only.
    n1.sql("CREATE TABLE events (ts DateTime, v Int64) ORDER BY ts").await;
    n1.insert("events", "JSONEachRow", r#"{"ts": 1, "v": 1}"#).await;
    n1.sql(&format!("CREATE USER reader IDENTIFIED BY '{READER_PASSWORD}'")).await;
    n1.sql("GRANT SELECT ON default.events TO reader").await;
    let reach = until("the grant reaching n2", Duration::from_secs(10), async || {
        let answer = n2.request_as("reader", READER_PASSWORD, "SELECT count() FROM events").await;
        answer.status == 200 && answer.text().trim() == "1"
    })
    .await;
    println!("a GRANT made on n1 took effect on n2 after {reach:?}");
    let schema_before = n1.sql("DESCRIBE TABLE events").await;
    for (statement, privilege) in [
        ("INSERT INTO events VALUES (2, 2)", "INSERT"),
        ("ALTER TABLE events ADD COLUMN extra String", "ALTER"),
        ("DROP TABLE events", "DROP"),
        ("CREATE TABLE other (a Int64) ORDER BY a", "CREATE"),
        ("CREATE USER intruder IDENTIFIED BY 'x'", "ACCESS MANAGEMENT"),
        ("GRANT ALL ON *.* TO reader", "ACCESS MANAGEMENT"),
        ("SELECT * FROM system.users", "ACCESS MANAGEMENT"),
    ] {
        let refused = n3.request_as("reader", READER_PASSWORD, statement).await;
        assert_eq!(refused.status, 403, "{statement}: {}", refused.text());
        assert!(
            refused.text().contains(&format!("lacks the {privilege} privilege")),
            "{statement}: {}",
            refused.text()
        );
    }
    let post = n3.request_as("reader", READER_PASSWORD, "SELECT 1").await;
    assert_eq!(post.status, 200, "the refusals did not lock the reader out");
    assert_eq!(n1.count("events").await, 1, "a refused INSERT stored nothing");
    assert_eq!(n1.sql("DESCRIBE TABLE events").await, schema_before, "a refused ALTER changed nothing");
    assert_eq!(n1.sql("SHOW TABLES").await.trim(), "events", "a refused DROP or CREATE changed nothing");
    assert_eq!(n1.sql("SELECT name FROM system.users ORDER BY name").await, "default\nreader\n");
    let own = n3.request_as("reader", READER_PASSWORD, "SHOW GRANTS").await.ok().text();
    assert_eq!(own.trim(), "GRANT SELECT ON default.events TO reader");
    let seen =
        n2.sql("SELECT user_name, access_type, database, table FROM system.grants WHERE user_name = 'reader'").await;
    assert_eq!(seen.trim(), "reader\tSELECT\tdefault\tevents");

    // A grant made on another node lets the insert in.
    n2.sql("GRANT INSERT ON default.* TO reader").await;
    until("the INSERT grant reaching n3", Duration::from_secs(10), async || {
        n3.request_as("reader", READER_PASSWORD, "INSERT INTO events VALUES (2, 2)").await.status == 200
    })
    .await;
    n1.wait_for("SELECT count() FROM events", "2", Duration::from_secs(10)).await;

    // DROP USER locks the user out everywhere.
    n3.sql("DROP USER reader").await;
    for node in [n3, n1, n2] {
        until("the dropped user being refused", Duration::from_secs(10), async || {
            node.request_as("reader", READER_PASSWORD, "SELECT count() FROM events").await.status == 401
        })
        .await;
    }
    let last_admin = n1.request("DROP USER default", &[], Vec::new()).await;
    assert_eq!(last_admin.status, 400, "the last user who can manage users stays: {}", last_admin.text());

    // The query log names who did what, and how it ended.
    let log =
        n1.sql("SELECT user, query_kind, status, query FROM system.query_log WHERE query_kind = 'CREATE USER'").await;
    assert_eq!(log.trim(), "default\tCREATE USER\t200\tCREATE USER reader IDENTIFIED BY '[HIDDEN]'");
    let refused = n3
        .sql(
            "SELECT DISTINCT query_kind, exception_code FROM system.query_log WHERE user = 'reader' AND status = 403 \
             ORDER BY query_kind",
        )
        .await;
    let kinds = ["ALTER TABLE", "CREATE TABLE", "CREATE USER", "DROP TABLE", "GRANT", "INSERT", "SELECT"];
    let expected: Vec<String> = kinds.iter().map(|k| format!("{k}\tACCESS_DENIED")).collect();
    assert_eq!(refused.lines().collect::<Vec<_>>(), expected, "every refusal is logged");
    let failed_sign_in = n1.sql("SELECT count() FROM system.query_log WHERE user = 'nobody' AND status = 401").await;
    assert_eq!(failed_sign_in.trim(), "1");
    let inserted = n3
        .sql("SELECT rows FROM system.query_log WHERE user = 'reader' AND query_kind = 'INSERT' AND status = 200")
        .await;
    assert_eq!(inserted.trim(), "1", "rows written are logged");

    // No password reached a log line, /metrics or a system table.
    for node in [n1, n2, n3] {
        let metrics = node.get("metrics").await.ok().text();
        let mut system_tables = String::new();
        for table in ["users", "grants", "query_log", "parts", "tables", "replicas"] {
            system_tables.push_str(&node.sql(&format!("SELECT * FROM system.{table} FORMAT JSONEachRow")).await);
        }
        for secret in [ADMIN_PASSWORD, READER_PASSWORD] {
            assert!(!node.log_text().contains(secret), "a password is in {}", node.log.display());
            assert!(!metrics.contains(secret), "a password is in /metrics");
            assert!(!system_tables.contains(secret), "a password is in a system table");
        }
        assert!(!node.log_text().contains(&cluster.secret), "the cluster secret is in {}", node.log.display());
    }
}

/// `tandem serve` on an address anyone can reach, as a raw process (not through the harness,
/// which serves on loopback). Killed when dropped.
struct OpenNode {
    child: std::process::Child,
    url: String,
    log: std::path::PathBuf,
}

impl OpenNode {
    fn start(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> OpenNode {
        let port = free_port();
        let log = dir.join(format!("tandem-{port}.log"));
        let child = Command::new(tandem_binary().unwrap())
            .args(["serve", "--http-addr", &format!("0.0.0.0:{port}"), "--data-dir"])
            .arg(dir.join("data"))
            .args(args)
            .envs(env.iter().copied())
            .env("TANDEM_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        OpenNode { child, url: format!("http://127.0.0.1:{port}/"), log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the node answers `/ready`, or until it exits (returning its status).
    async fn ready_or_exit(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if let Ok(answer) = reqwest::get(format!("{}ready", self.url)).await
                && answer.status().is_success()
            {
                return None;
            }
            assert!(Instant::now() < deadline, "neither ready nor exited: {}", self.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn query(&self, sql: &str, credentials: Option<(&str, &str)>) -> u16 {
        let mut request = reqwest::Client::new().post(&self.url).query(&[("query", sql)]);
        if let Some((user, password)) = credentials {
            request = request.basic_auth(user, Some(password));
        }
        request.send().await.unwrap().status().as_u16()
    }
}

impl Drop for OpenNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_open_to_the_network_gets_a_first_user_or_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();

    // A single node generates the first user's password, once.
    let mut single = OpenNode::start(dir.path(), &[], &[]);
    assert_eq!(single.ready_or_exit().await, None, "{}", single.log_text());
    let file = dir.path().join("data").join("default-password");
    let password = std::fs::read_to_string(&file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(single.log_text().matches(password.as_str()).count(), 1, "printed once at first start");
    assert_eq!(single.query("SELECT 1", None).await, 401);
    assert_eq!(single.query("SELECT 1", Some(("default", &password))).await, 200);
    drop(single);
    let mut again = OpenNode::start(dir.path(), &[], &[]);
    assert_eq!(again.ready_or_exit().await, None, "{}", again.log_text());
    assert!(!again.log_text().contains(password.as_str()), "not printed at a later start");
    assert_eq!(again.query("SELECT 1", Some(("default", &password))).await, 200);
    drop(again);

    // A cluster node open to the network without users refuses to start...
    let etcd = Etcd::start().await.unwrap();
    let cluster = format!("open-{}", free_port());
    let node_args = ["--etcd", etcd.endpoint.as_str(), "--node-id", "n1", "--cluster", cluster.as_str()];
    let secret = [("TANDEM_CLUSTER_SECRET", "s3cret-cluster")];
    let cluster_dir = tempfile::tempdir().unwrap();
    let mut refused = OpenNode::start(cluster_dir.path(), &node_args, &secret);
    let status = refused.ready_or_exit().await.expect("refuses to start");
    assert!(!status.success());
    assert!(refused.log_text().contains("--admin-password-file"), "{}", refused.log_text());
    drop(refused);
    // ... unless told --insecure (everyone is then the implicit `default` user) ...
    let mut insecure_args = node_args.to_vec();
    insecure_args.push("--insecure");
    let mut insecure = OpenNode::start(cluster_dir.path(), &insecure_args, &secret);
    assert_eq!(insecure.ready_or_exit().await, None, "{}", insecure.log_text());
    assert_eq!(insecure.query("SELECT 1", None).await, 200);
    drop(insecure);
    // ... or given the first user's password.
    let with_admin = [secret[0], ("TANDEM_ADMIN_PASSWORD", ADMIN_PASSWORD)];
    let mut admin = OpenNode::start(cluster_dir.path(), &node_args, &with_admin);
    assert_eq!(admin.ready_or_exit().await, None, "{}", admin.log_text());
    assert_eq!(admin.query("SELECT 1", None).await, 401);
    assert_eq!(admin.query("SELECT 1", Some(("default", ADMIN_PASSWORD))).await, 200);
    assert!(!admin.log_text().contains(ADMIN_PASSWORD));
    drop(admin);

    let check = Command::new(tandem_binary().unwrap())
        .args(["serve", "--check-config"])
        .env("TANDEM_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && printed.contains("admin_password"), "{printed}");
    assert!(!printed.contains(ADMIN_PASSWORD), "--check-config shows no password: {printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_on_loopback_needs_no_password() {
    let (node, _dir) = tandem_tests::single_node(&[]).await;
    assert_eq!(node.sql("SELECT 1").await.trim(), "1");
    assert_eq!(node.request_as("default", "", "SELECT 1").await.ok().text().trim(), "1");
    assert_eq!(node.sql("SHOW GRANTS").await.trim(), "GRANT ALL ON *.* TO default");
    let stranger = node.request_as("alice", "pw", "SELECT 1").await;
    assert_eq!(stranger.status, 401, "credentials no user matches are refused: {}", stranger.text());
}
