//! Schema evolution: ALTER from any node, applied by compare-and-swap retried inside the
//! server, ordered like parts; old parts read under the current schema.

use std::time::Duration;

use tandem_tests::{Cluster, single_node};

const CONVERGE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn old_parts_are_read_under_the_current_schema() {
    let (node, _dir) = single_node(&[]).await;
    node.sql("CREATE TABLE t (id UInt64, host String, v Float64) ORDER BY id").await;
    node.insert("t", "CSV", "1,a,1.5\n2,b,2.5\n").await;
    node.sql("ALTER TABLE t ADD COLUMN c Float64 DEFAULT 9.5 COMMENT 'added later', ADD COLUMN n Nullable(Int64)")
        .await;
    node.insert(
        "t",
        "JSONEachRow",
        "{\"id\":3,\"host\":\"c\",\"v\":3.5,\"c\":1,\"n\":7}\n{\"id\":4,\"host\":\"d\",\"v\":4.5}\n",
    )
    .await;
    assert_eq!(
        node.sql("SELECT id, host, v, c, n FROM t ORDER BY id FORMAT CSV").await,
        "1,\"a\",1.5,9.5,\\N\n2,\"b\",2.5,9.5,\\N\n3,\"c\",3.5,1,7\n4,\"d\",4.5,9.5,\\N\n",
        "old parts read the DEFAULT (or NULL); an insert that omits the column stores its DEFAULT"
    );
    node.sql("ALTER TABLE t RENAME COLUMN host TO server, DROP COLUMN v").await;
    node.sql("ALTER TABLE t ADD COLUMN host String DEFAULT 'new'").await;
    assert_eq!(
        node.sql("SELECT id, server, c, host FROM t ORDER BY id FORMAT CSV").await,
        "1,\"a\",9.5,\"new\"\n2,\"b\",9.5,\"new\"\n3,\"c\",1,\"new\"\n4,\"d\",9.5,\"new\"\n",
        "a renamed column keeps its data; a new column of an old name does not resurrect it"
    );
    let columns = node.sql("SELECT * FROM t LIMIT 1 FORMAT CSVWithNames").await;
    assert_eq!(columns.lines().next(), Some("id,server,c,n,host"), "the dropped column is gone");
    assert_eq!(node.sql("SELECT count() FROM t WHERE server = 'b'").await.trim(), "1", "filters on renamed columns");
    let describe = node.sql("DESCRIBE TABLE t FORMAT CSV").await;
    assert!(describe.contains(r#""c","Float64","DEFAULT","9.5","added later""#), "{describe}");
    node.sql("ALTER TABLE t MODIFY COLUMN c COMMENT 'changed', MODIFY SETTING dedup_window_blocks = 5").await;
    assert!(node.sql("DESCRIBE TABLE t FORMAT CSV").await.contains(r#""c","Float64","DEFAULT","9.5","changed""#));

    for (sql, status, needle) in [
        ("ALTER TABLE t ADD COLUMN c String", 409, "Float64"),
        ("ALTER TABLE t DROP COLUMN id", 400, "sort or partition key"),
        ("ALTER TABLE t DROP COLUMN nope", 400, "`nope`"),
        ("ALTER TABLE nope ADD COLUMN x Int64", 404, "`nope`"),
        ("ALTER TABLE t MODIFY COLUMN c Int64", 501, "type"),
    ] {
        let answer = node.request(sql, &[], Vec::new()).await;
        assert_eq!(answer.status, status, "{sql}: {}", answer.text());
        assert!(answer.text().contains(needle), "{sql}: {}", answer.text());
    }
}

/// Waits until every node's `t` has exactly the `expected` columns (in any order: concurrent
/// ADD COLUMNs may land in either order).
async fn wait_for_columns(cluster: &Cluster, expected: &str) {
    let mut want: Vec<&str> = expected.split(',').collect();
    want.sort_unstable();
    for node in &cluster.nodes {
        node.wait_for("SELECT name FROM system.tables WHERE name = 't'", "t", CONVERGE).await;
        let deadline = tokio::time::Instant::now() + CONVERGE;
        loop {
            let header = node.sql("SELECT * FROM t LIMIT 0 FORMAT CSVWithNames").await;
            let mut got: Vec<&str> = header.trim().split(',').collect();
            got.sort_unstable();
            if got == want {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{} has columns {header:?}, expected {expected}", node.url);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn concurrent_alters_on_different_nodes_all_survive() {
    let cluster = Cluster::start(3).await.unwrap();
    cluster.nodes[0].sql("CREATE TABLE t (id UInt64) ORDER BY id").await;
    wait_for_columns(&cluster, "id").await;
    let mut expected = String::from("id");
    for trial in 0..20 {
        let (add_a, add_b) =
            (format!("ALTER TABLE t ADD COLUMN a{trial} Int64"), format!("ALTER TABLE t ADD COLUMN b{trial} String"));
        let (a, b) = tokio::join!(
            cluster.nodes[0].request(&add_a, &[("alter_sync", "2")], Vec::new()),
            cluster.nodes[1].request(&add_b, &[], Vec::new()),
        );
        assert_eq!((a.status, b.status), (200, 200), "trial {trial}: {} / {}", a.text(), b.text());
        // alter_sync=2 answered only once every live node applied it: n3 has the column now.
        let header = cluster.nodes[2].sql("SELECT * FROM t LIMIT 0 FORMAT CSVWithNames").await;
        assert!(header.trim().split(',').any(|c| c == format!("a{trial}")), "trial {trial}: n3 has {header}");
        expected.push_str(&format!(",a{trial},b{trial}"));
    }
    wait_for_columns(&cluster, &expected).await;
}

#[tokio::test]
async fn the_same_add_column_if_not_exists_on_every_node_makes_one_column() {
    let cluster = Cluster::start(3).await.unwrap();
    cluster.nodes[0].sql("CREATE TABLE t (id UInt64) ORDER BY id").await;
    wait_for_columns(&cluster, "id").await;
    let sql = "ALTER TABLE t ADD COLUMN IF NOT EXISTS x Float64";
    let answers = futures::future::join_all(cluster.nodes.iter().map(|n| n.request(sql, &[], Vec::new()))).await;
    assert!(answers.iter().all(|a| a.status == 200), "{:?}", answers.iter().map(|a| a.text()).collect::<Vec<_>>());
    wait_for_columns(&cluster, "id,x").await;
}

#[tokio::test]
async fn the_same_column_with_two_types_at_once_has_one_winner_and_a_409() {
    let cluster = Cluster::start(3).await.unwrap();
    cluster.nodes[0].sql("CREATE TABLE t (id UInt64) ORDER BY id").await;
    wait_for_columns(&cluster, "id").await;
    let (a, b) = tokio::join!(
        cluster.nodes[0].request("ALTER TABLE t ADD COLUMN x Int64", &[], Vec::new()),
        cluster.nodes[1].request("ALTER TABLE t ADD COLUMN x String", &[], Vec::new()),
    );
    let statuses = [a.status, b.status];
    assert!(statuses.contains(&200) && statuses.contains(&409), "{} / {}", a.text(), b.text());
    let loser = if a.status == 409 { &a } else { &b };
    assert!(
        loser.text().contains("`x`") && loser.text().contains("Int64") && loser.text().contains("String"),
        "{}",
        loser.text()
    );
    let winner_type = if a.status == 200 { "Int64" } else { "String" };
    wait_for_columns(&cluster, "id,x").await;
    // Inserts keep working, with the winning type only.
    let value = if winner_type == "Int64" { "5" } else { "\"five\"" };
    cluster.nodes[2].insert("t", "JSONEachRow", format!("{{\"id\":1,\"x\":{value}}}\n")).await;
    for node in &cluster.nodes {
        node.wait_for("SELECT count() FROM t", "1", CONVERGE).await;
        let describe = node.sql("DESCRIBE TABLE t FORMAT CSV").await;
        assert!(describe.contains(&format!("\"x\",\"{winner_type}\"")), "{describe}");
    }
}

#[tokio::test]
async fn inserts_during_a_stream_of_schema_changes_are_all_readable_everywhere() {
    let cluster = Cluster::start(3).await.unwrap();
    cluster.nodes[0].sql("CREATE TABLE t (id UInt64, v Float64) ORDER BY id").await;
    wait_for_columns(&cluster, "id,v").await;
    let writer = async {
        for i in 0..40u64 {
            let node = &cluster.nodes[(i % 3) as usize];
            node.insert("t", "JSONEachRow", format!("{{\"id\":{i},\"v\":{}}}\n", i as f64 / 2.0)).await;
        }
    };
    let alterer = async {
        for k in 0..10 {
            let node = &cluster.nodes[k % 3];
            node.sql(&format!("ALTER TABLE t ADD COLUMN c{k} Int64 DEFAULT {k}")).await;
            if k % 3 == 2 {
                node.sql(&format!("ALTER TABLE t RENAME COLUMN c{} TO r{}", k - 1, k - 1)).await;
            }
        }
    };
    tokio::join!(writer, alterer);
    let query = "SELECT count(), sum(id), sum(v), sum(c0), sum(r1), sum(c9) FROM t FORMAT CSV";
    let mut answers = Vec::new();
    for node in &cluster.nodes {
        node.wait_for("SELECT count() FROM t", "40", CONVERGE).await;
        answers.push(node.sql(query).await);
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "nodes disagree: {answers:?}");
    let fields: Vec<&str> = answers[0].trim().split(',').collect();
    assert_eq!(&fields[..3], ["40", "780", "390"], "every row with its values");
    assert_eq!(fields[5], "360", "c9 reads its DEFAULT 9 on all 40 rows, old parts included");
}

#[tokio::test]
async fn inserts_can_add_columns_when_the_table_allows_it() {
    let (node, _dir) = single_node(&[]).await;
    node.sql("CREATE TABLE strict (id UInt64) ORDER BY id").await;
    let refused = node.request("INSERT INTO strict FORMAT JSONEachRow", &[], "{\"id\":1,\"temp\":2.5}\n").await;
    assert_eq!(refused.status, 400, "off by default: {}", refused.text());

    node.sql("CREATE TABLE m (id UInt64) ORDER BY id SETTINGS auto_add_columns = 1").await;
    node.insert(
        "m",
        "JSONEachRow",
        "{\"id\":1,\"temp\":21,\"site\":\"a\",\"ok\":true}\n{\"id\":2,\"temp\":21.5,\"n\":null}\n",
    )
    .await;
    node.insert("m", "CSVWithNames", "id,humidity,site\n3,40,b\n").await;
    let describe = node.sql("DESCRIBE TABLE m FORMAT CSV").await;
    let types: Vec<_> = describe
        .lines()
        .map(|l| l.split(',').take(2).map(|f| f.trim_matches('"')).collect::<Vec<_>>().join(" "))
        .collect();
    // JSON fields are unordered: new ones are added in name order; header fields in header order.
    let expected = [
        "id UInt64",
        "ok Nullable(Bool)",
        "site Nullable(String)",
        "temp Nullable(Float64)",
        "n Nullable(String)",
        "humidity Nullable(Int64)",
    ];
    assert_eq!(types, expected);
    assert_eq!(
        node.sql("SELECT id, temp, site, ok, humidity FROM m ORDER BY id FORMAT CSV").await,
        "1,21,\"a\",true,\\N\n2,21.5,\\N,\\N,\\N\n3,\\N,\"b\",\\N,40\n"
    );
    let conflict = node.request("INSERT INTO m FORMAT JSONEachRow", &[], "{\"id\":4,\"temp\":\"hot\"}\n").await;
    assert_eq!(conflict.status, 400, "an existing column keeps its type: {}", conflict.text());
    assert!(conflict.text().contains("`temp`") && conflict.text().contains("Float64"), "{}", conflict.text());
}
