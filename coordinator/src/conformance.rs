//! The conformance suite: the behaviour tandem relies on from a metadata backend, written
//! once and run against every implementation (embedded here, etcd in the integration tests).
//!
//! [`run_all`] runs every check; each check works under its own key prefix, so several
//! suites can share one etcd.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::{
    AsyncBlockId, ClusterEvent, Compare, CoordError, Coordinator, FlushOutcome, KvBackend, NewPart, PartId,
    PartOutcome, TxnOp, UserEvent, UserWrite, WatchEventKind, WatchResponse,
};

/// Runs every check against `kv`, under keys starting with `prefix`.
pub async fn run_all(kv: Arc<dyn KvBackend>, prefix: &str) {
    transactions_are_atomic_and_ordered(kv.as_ref(), &format!("{prefix}txn/")).await;
    range_is_a_sorted_prefix_snapshot(kv.as_ref(), &format!("{prefix}range/")).await;
    watch_replays_history_then_follows(kv.as_ref(), &format!("{prefix}watch/")).await;
    watch_from_compacted_revision_says_so(kv.as_ref(), &format!("{prefix}compact/")).await;
    leased_keys_vanish_with_their_lease(kv.as_ref(), &format!("{prefix}lease/")).await;
    tables_are_created_once_and_swapped_by_version(kv.clone(), &format!("{prefix}tables/")).await;
    blocks_are_admitted_once(kv.clone(), &format!("{prefix}blocks/")).await;
    concurrent_registrations_of_one_block_admit_one(kv.clone(), &format!("{prefix}race/")).await;
    parts_follow_their_table(kv.clone(), &format!("{prefix}follow/")).await;
    snapshot_and_watch_agree(kv.clone(), &format!("{prefix}snapshot/")).await;
    holders_follow_their_parts(kv.clone(), &format!("{prefix}holders/")).await;
    quorum_revision_only_grows(kv.clone(), &format!("{prefix}quorum/")).await;
    expired_blocks_are_admitted_again(kv.clone(), &format!("{prefix}expiry/")).await;
    block_ids_expire_with_their_window(kv.clone(), &format!("{prefix}window/")).await;
    old_blocks_are_pruned(kv.clone(), &format!("{prefix}prune/")).await;
    one_leader_at_a_time_and_fenced(kv.clone(), &format!("{prefix}leaders/")).await;
    merges_replace_their_sources_once(kv.clone(), &format!("{prefix}merges/")).await;
    flushes_register_in_sequence_with_their_block_ids(kv.clone(), &format!("{prefix}flushes/")).await;
    users_change_together_or_not_at_all(kv.clone(), &format!("{prefix}users/")).await;
}

fn put(key: &str, value: &str) -> TxnOp {
    TxnOp::Put { key: key.to_string(), value: value.as_bytes().to_vec(), lease: None }
}

pub async fn transactions_are_atomic_and_ordered(kv: &dyn KvBackend, p: &str) {
    let (a, b) = (format!("{p}a"), format!("{p}b"));
    let first = kv.txn(vec![Compare::Absent(a.clone())], vec![put(&a, "1"), put(&b, "1")], vec![]).await.unwrap();
    assert!(first.succeeded);
    let got_a = kv.get(&a).await.unwrap().expect("a written");
    let got_b = kv.get(&b).await.unwrap().expect("b written");
    assert_eq!(got_a.mod_revision, first.revision, "both keys carry the transaction's revision");
    assert_eq!(got_b.mod_revision, first.revision);
    assert_eq!(got_a.create_revision, first.revision);

    let refused = kv
        .txn(vec![Compare::Absent(a.clone())], vec![put(&b, "2")], vec![TxnOp::Get { key: a.clone() }])
        .await
        .unwrap();
    assert!(!refused.succeeded, "create-if-absent on an existing key must fail");
    assert_eq!(refused.gets[0].as_ref().map(|kv| kv.value.clone()), Some(b"1".to_vec()));
    assert_eq!(kv.get(&b).await.unwrap().unwrap().value, b"1", "the success branch must not run");
    assert_eq!(refused.revision, first.revision, "a read-only transaction does not advance the revision");

    let stale =
        kv.txn(vec![Compare::ModRevision(a.clone(), first.revision - 1)], vec![put(&a, "x")], vec![]).await.unwrap();
    assert!(!stale.succeeded);
    let swap = kv.txn(vec![Compare::ModRevision(a.clone(), first.revision)], vec![put(&a, "2")], vec![]).await.unwrap();
    assert!(swap.succeeded);
    assert!(swap.revision > first.revision, "revisions only grow");
    let updated = kv.get(&a).await.unwrap().unwrap();
    assert_eq!(updated.create_revision, first.revision, "an update keeps the create revision");
    assert_eq!(updated.mod_revision, swap.revision);

    let deleted = kv.txn(vec![], vec![TxnOp::DeletePrefix { prefix: p.to_string() }], vec![]).await.unwrap();
    assert!(deleted.succeeded);
    assert!(kv.get(&a).await.unwrap().is_none());
    assert!(kv.range(p).await.unwrap().0.is_empty());
}

pub async fn range_is_a_sorted_prefix_snapshot(kv: &dyn KvBackend, p: &str) {
    for key in ["c", "a", "b"] {
        kv.txn(vec![], vec![put(&format!("{p}in/{key}"), key)], vec![]).await.unwrap();
    }
    kv.txn(vec![], vec![put(&format!("{p}inside"), "no")], vec![]).await.unwrap();
    let (kvs, revision) = kv.range(&format!("{p}in/")).await.unwrap();
    let keys: Vec<_> = kvs.iter().map(|kv| kv.key.trim_start_matches(p)).collect();
    assert_eq!(keys, ["in/a", "in/b", "in/c"]);
    assert!(kvs.iter().all(|kv| kv.mod_revision <= revision), "the snapshot revision covers its keys");
    assert_eq!(kv.count(&format!("{p}in/")).await.unwrap(), 3);
    assert_eq!(kv.count(&format!("{p}none/")).await.unwrap(), 0);
    let first: Vec<_> = kv.range_first(&format!("{p}in/"), 2).await.unwrap().into_iter().map(|kv| kv.value).collect();
    assert_eq!(first, [b"a".to_vec(), b"b".to_vec()], "the first keys in key order");
    assert!(kv.range_first(&format!("{p}in/"), 0).await.unwrap().is_empty());
}

pub async fn watch_replays_history_then_follows(kv: &dyn KvBackend, p: &str) {
    let first = kv.txn(vec![], vec![put(&format!("{p}k1"), "1")], vec![]).await.unwrap().revision;
    kv.txn(vec![], vec![put(&format!("{p}k2"), "2"), put(&format!("{p}k3"), "3")], vec![]).await.unwrap();
    kv.txn(vec![], vec![put("/elsewhere/conformance", "x")], vec![]).await.unwrap();
    let mut stream = kv.watch(p, first).await.unwrap();
    kv.txn(vec![], vec![TxnOp::Delete { key: format!("{p}k1") }], vec![]).await.unwrap();

    let mut seen = Vec::new();
    let mut revisions = Vec::new();
    while seen.len() < 4 {
        let item =
            tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("watch delivers within 10 s");
        let WatchResponse::Events { revision, events } = item.expect("stream open").unwrap() else {
            panic!("unexpected compaction")
        };
        revisions.push(revision);
        for e in events {
            assert_eq!(e.kv.mod_revision, revision);
            seen.push((e.kind, e.kv.key.trim_start_matches(p).to_string()));
        }
    }
    assert_eq!(
        seen,
        [
            (WatchEventKind::Put, "k1".to_string()),
            (WatchEventKind::Put, "k2".to_string()),
            (WatchEventKind::Put, "k3".to_string()),
            (WatchEventKind::Delete, "k1".to_string()),
        ]
    );
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "one batch per revision, in order: {revisions:?}");
}

pub async fn watch_from_compacted_revision_says_so(kv: &dyn KvBackend, p: &str) {
    let old = kv.txn(vec![], vec![put(&format!("{p}k"), "1")], vec![]).await.unwrap().revision;
    let newer = kv.txn(vec![], vec![put(&format!("{p}k"), "2")], vec![]).await.unwrap().revision;
    kv.compact(newer).await.unwrap();
    let mut stream = kv.watch(p, old).await.unwrap();
    let item = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("answer within 10 s");
    match item.expect("stream open").unwrap() {
        WatchResponse::Compacted { compact_revision } => assert!(compact_revision >= newer),
        other => panic!("expected a compaction notice, got {other:?}"),
    }
    let mut fresh = kv.watch(p, newer).await.unwrap();
    let item = tokio::time::timeout(Duration::from_secs(10), fresh.next()).await.expect("answer within 10 s");
    assert!(matches!(item, Some(Ok(WatchResponse::Events { revision, .. })) if revision == newer));
}

pub async fn leased_keys_vanish_with_their_lease(kv: &dyn KvBackend, p: &str) {
    let key = format!("{p}revoked");
    let lease = kv.grant_lease(Duration::from_secs(30)).await.unwrap();
    kv.txn(vec![], vec![TxnOp::Put { key: key.clone(), value: b"x".to_vec(), lease: Some(lease) }], vec![])
        .await
        .unwrap();
    assert_eq!(kv.get(&key).await.unwrap().unwrap().lease, lease);
    kv.keep_alive(lease).await.unwrap();
    kv.revoke_lease(lease).await.unwrap();
    assert!(kv.get(&key).await.unwrap().is_none(), "revoking a lease deletes its keys");

    let key = format!("{p}expired");
    let lease = kv.grant_lease(Duration::from_secs(1)).await.unwrap();
    kv.txn(vec![], vec![TxnOp::Put { key: key.clone(), value: b"x".to_vec(), lease: Some(lease) }], vec![])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while kv.get(&key).await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "a key must vanish once its 1 s lease expires");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let renewed = kv.keep_alive(lease).await;
    assert!(matches!(renewed, Err(CoordError::LeaseExpired(_))), "renewing an expired lease: {renewed:?}");
}

/// The id of the part labelled `label` in these tests.
fn id(label: &str) -> PartId {
    PartId::of_bytes(label.as_bytes())
}

fn part(label: &str, block: Option<&str>) -> NewPart {
    NewPart {
        id: id(label),
        partition: "all".to_string(),
        block_id: block.map(str::to_string),
        manifest: format!("manifest of {label}").into_bytes(),
    }
}

pub async fn tables_are_created_once_and_swapped_by_version(kv: Arc<dyn KvBackend>, p: &str) {
    let c = Coordinator::new(kv, p);
    let created = c.create_table("t", b"v1".to_vec()).await.unwrap();
    assert!(matches!(c.create_table("t", b"other".to_vec()).await, Err(CoordError::TableExists(_))));
    let updated =
        c.update_table("t", created.version, b"v2".to_vec()).await.unwrap().expect("swap at the current version");
    assert!(updated.version > created.version);
    assert_eq!(updated.created, created.created);
    let lost =
        c.update_table("t", created.version, b"v3".to_vec()).await.unwrap().expect_err("stale version must lose");
    assert_eq!(lost.map(|t| t.doc), Some(b"v2".to_vec()), "a lost race returns the current record");
    assert_eq!(c.list_tables().await.unwrap().iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["t"]);
    c.drop_table("t").await.unwrap();
    assert!(c.get_table("t").await.unwrap().is_none());
    assert!(matches!(c.drop_table("t").await, Err(CoordError::NoSuchTable(_))));
}

pub async fn blocks_are_admitted_once(kv: Arc<dyn KvBackend>, p: &str) {
    let c = Coordinator::new(kv, p);
    let table = c.create_table("t", b"schema".to_vec()).await.unwrap();
    let first = c
        .register_parts("t", table.version, vec![part("p1", Some("b1")), part("p2", Some("b2"))], &["n1"], 0, i64::MAX)
        .await
        .unwrap();
    assert!(first.outcomes.iter().all(|o| matches!(o, PartOutcome::Registered { .. })));

    let again = c
        .register_parts("t", table.version, vec![part("p3", Some("b1")), part("p4", Some("b3"))], &["n1"], 0, i64::MAX)
        .await
        .unwrap();
    assert_eq!(again.outcomes[0], PartOutcome::Duplicate { existing_part: id("p1"), revision: first.revision });
    assert!(matches!(again.outcomes[1], PartOutcome::Registered { .. }), "the new block of a mixed insert is admitted");

    let undeduplicated =
        c.register_parts("t", table.version, vec![part("p5", None)], &["n1"], 0, i64::MAX).await.unwrap();
    assert!(matches!(undeduplicated.outcomes[0], PartOutcome::Registered { .. }));

    let ids: BTreeSet<_> = c.snapshot().await.unwrap().parts.into_iter().map(|p| p.id).collect();
    assert_eq!(ids, BTreeSet::from(["p1", "p2", "p4", "p5"].map(id)), "the duplicate p3 is not registered");
    assert_eq!(c.get_block("t", "b1").await.unwrap().map(|(b, _)| b.part), Some(id("p1")));
}

pub async fn concurrent_registrations_of_one_block_admit_one(kv: Arc<dyn KvBackend>, p: &str) {
    let c = Coordinator::new(kv, p);
    let table = c.create_table("t", b"schema".to_vec()).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                c.register_parts("t", table.version, vec![part(&format!("p{i}"), Some("same"))], &["n1"], 0, i64::MAX)
                    .await
            })
        })
        .collect();
    let mut registered = 0;
    for task in tasks {
        match task.await.unwrap().unwrap().outcomes[0] {
            PartOutcome::Registered { .. } => registered += 1,
            PartOutcome::Duplicate { .. } => {}
        }
    }
    assert_eq!(registered, 1, "exactly one of eight concurrent writers of a block wins");
    assert_eq!(c.snapshot().await.unwrap().parts.len(), 1);
}

pub async fn flushes_register_in_sequence_with_their_block_ids(kv: Arc<dyn KvBackend>, p: &str) {
    let c = Coordinator::new(kv, p);
    let table = c.create_table("t", b"v1".to_vec()).await.unwrap();
    let ids =
        |labels: &[&str]| -> Vec<AsyncBlockId> { labels.iter().map(|l| AsyncBlockId([l.as_bytes()[0]; 16])).collect() };
    let first = c
        .register_flush("t", table.version, 0, &[part("f1", None)], &ids(&["a", "b"]), &["n1"], 1_000, i64::MAX)
        .await
        .unwrap();
    let FlushOutcome::Registered { revision: first } = first else { panic!("a first flush registers: {first:?}") };

    // A second node that has not seen the first flush: its view of the block ids is stale.
    let stale =
        c.register_flush("t", table.version, 0, &[part("f2", None)], &ids(&["b"]), &["n2"], 1_001, i64::MAX).await;
    assert_eq!(stale.unwrap(), FlushOutcome::Stale { sequence: first, table_version: Some(table.version) });

    let second = c
        .register_flush("t", table.version, first, &[part("f3", None)], &ids(&["c"]), &["n2"], 1_002, i64::MAX)
        .await
        .unwrap();
    assert!(matches!(second, FlushOutcome::Registered { revision } if revision > first));

    let (sets, sequences, _) = c.list_async_blocks().await.unwrap();
    assert_eq!(sets.iter().map(|s| s.ids.len()).collect::<Vec<_>>(), [2, 1], "sets listed oldest first");
    assert_eq!(sets[0].ids, ids(&["a", "b"]));
    assert_eq!(sets[0].revision, first);
    assert_eq!(sequences.len(), 1);
    let snapshot = c.snapshot().await.unwrap();
    assert_eq!(snapshot.async_blocks, sets, "the snapshot carries the same sets");
    let parts: BTreeSet<_> = snapshot.parts.into_iter().map(|p| p.id).collect();
    assert_eq!(parts, BTreeSet::from(["f1", "f3"].map(id)), "the stale flush registered nothing");

    c.forget_async_blocks("t", &[sets[0].key.clone()]).await.unwrap();
    assert_eq!(c.list_async_blocks().await.unwrap().0.len(), 1, "a forgotten set is gone");

    let altered = c.update_table("t", table.version, b"v2".to_vec()).await.unwrap().unwrap();
    let changed = c
        .register_flush(
            "t",
            table.version,
            second_revision(&c).await,
            &[part("f4", None)],
            &ids(&["d"]),
            &["n1"],
            1_003,
            i64::MAX,
        )
        .await
        .unwrap();
    assert!(
        matches!(changed, FlushOutcome::Stale { table_version: Some(v), .. } if v == altered.version),
        "a flush compares the table's current version: {changed:?}"
    );
    c.drop_table("t").await.unwrap();
    let (sets, sequences, _) = c.list_async_blocks().await.unwrap();
    assert!(sets.is_empty() && sequences.is_empty(), "dropping a table forgets its flushes");
}

async fn second_revision(c: &Coordinator) -> i64 {
    c.list_async_blocks().await.unwrap().1[0].1
}

pub async fn parts_follow_their_table(kv: Arc<dyn KvBackend>, p: &str) {
    let c = Coordinator::new(kv, p);
    let table = c.create_table("t", b"v1".to_vec()).await.unwrap();
    c.register_parts("t", table.version, vec![part("p1", Some("b1"))], &["n1"], 0, i64::MAX).await.unwrap();
    c.update_table("t", table.version, b"v2".to_vec()).await.unwrap().unwrap();
    let stale = c.register_parts("t", table.version, vec![part("p2", Some("b2"))], &["n1"], 0, i64::MAX).await;
    assert!(matches!(stale, Err(CoordError::TableChanged { .. })), "no part lands under a replaced schema: {stale:?}");

    c.drop_table("t").await.unwrap();
    let gone = c.register_parts("t", table.version, vec![part("p3", Some("b3"))], &["n1"], 0, i64::MAX).await;
    assert!(matches!(gone, Err(CoordError::NoSuchTable(_))));
    let recreated = c.create_table("t", b"v1".to_vec()).await.unwrap();
    let snapshot = c.snapshot().await.unwrap();
    assert!(snapshot.parts.is_empty(), "dropping a table drops its parts");
    let fresh =
        c.register_parts("t", recreated.version, vec![part("p1", Some("b1"))], &["n1"], 0, i64::MAX).await.unwrap();
    assert!(matches!(fresh.outcomes[0], PartOutcome::Registered { .. }), "dropping a table forgets its block ids");
}

pub async fn snapshot_and_watch_agree(kv: Arc<dyn KvBackend>, p: &str) {
    let c = Coordinator::new(kv, p);
    let table = c.create_table("t", b"v1".to_vec()).await.unwrap();
    c.register_parts("t", table.version, vec![part("p1", Some("b1"))], &["n1"], 0, i64::MAX).await.unwrap();
    let snapshot = c.snapshot().await.unwrap();
    assert_eq!(snapshot.tables.len(), 1);
    assert_eq!(snapshot.parts.len(), 1);

    let mut stream = c.watch(snapshot.revision + 1).await.unwrap();
    let added = c.register_parts("t", table.version, vec![part("p2", Some("b2"))], &["n1"], 0, i64::MAX).await.unwrap();
    c.drop_table("t").await.unwrap();
    let mut events = Vec::new();
    while !events.iter().any(|e| matches!(e, ClusterEvent::TableDropped { .. })) {
        let batch = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("event within 10 s");
        let batch = batch.expect("stream open").unwrap();
        assert!(batch.revision > snapshot.revision, "no event the snapshot already holds");
        events.extend(batch.events);
    }
    assert!(matches!(&events[0], ClusterEvent::PartAdded(p) if p.id == id("p2") && p.revision == added.revision));
    assert!(matches!(&events[1], ClusterEvent::HolderAdded(h) if h.part == id("p2") && h.node == "n1"));
    let rest: Vec<_> = events[2..].iter().map(|e| format!("{e:?}")).collect();
    assert!(rest.iter().any(|e| e.contains("PartRemoved")), "{rest:?}");
    assert!(rest.iter().any(|e| e.contains("HolderRemoved")), "{rest:?}");
}

pub async fn holders_follow_their_parts(kv: Arc<dyn KvBackend>, p: &str) {
    let c = Coordinator::new(kv, p);
    let table = c.create_table("t", b"v1".to_vec()).await.unwrap();
    let registered =
        c.register_parts("t", table.version, vec![part("p1", Some("b1"))], &["n1"], 0, i64::MAX).await.unwrap();
    assert_eq!(c.part_holders("t", &id("p1")).await.unwrap(), ["n1"], "the writer is the first holder");
    assert!(c.add_holder("t", &id("p1"), "n2").await.unwrap());
    assert!(c.add_holder("t", &id("p1"), "n2").await.unwrap(), "adding a holder twice is harmless");
    assert_eq!(c.part_holders("t", &id("p1")).await.unwrap(), ["n1", "n2"]);
    assert!(c.add_holder_at("t", &id("p1"), registered.revision, "n3").await.unwrap());
    assert!(
        !c.add_holder_at("t", &id("p1"), registered.revision + 1, "n4").await.unwrap(),
        "no holder for a registration that is not the one the caller saw"
    );
    assert!(!c.add_holder_at("t", &id("nope"), registered.revision, "n4").await.unwrap());
    assert_eq!(c.part_holders("t", &id("p1")).await.unwrap(), ["n1", "n2", "n3"]);
    c.remove_holder("t", &id("p1"), "n3").await.unwrap();
    assert!(!c.add_holder("t", &id("nope"), "n2").await.unwrap(), "no holder for an unregistered part");
    c.remove_holder("t", &id("p1"), "n1").await.unwrap();
    c.remove_holder("t", &id("p1"), "n1").await.unwrap();
    assert_eq!(c.part_holders("t", &id("p1")).await.unwrap(), ["n2"]);
    c.drop_table("t").await.unwrap();
    assert!(c.part_holders("t", &id("p1")).await.unwrap().is_empty(), "dropping a table forgets its holders");
}

pub async fn quorum_revision_only_grows(kv: Arc<dyn KvBackend>, p: &str) {
    let c = Coordinator::new(kv, p);
    assert_eq!(c.quorum_revision().await.unwrap(), 0);
    c.raise_quorum_revision(7).await.unwrap();
    c.raise_quorum_revision(5).await.unwrap();
    assert_eq!(c.quorum_revision().await.unwrap(), 7);
    let raisers: Vec<_> = (10..18)
        .map(|r| {
            let c = c.clone();
            tokio::spawn(async move { c.raise_quorum_revision(r).await })
        })
        .collect();
    for raiser in raisers {
        raiser.await.unwrap().unwrap();
    }
    assert_eq!(c.quorum_revision().await.unwrap(), 17, "concurrent raises keep the maximum");
}

pub async fn expired_blocks_are_admitted_again(kv: Arc<dyn KvBackend>, p: &str) {
    let c = Coordinator::new(kv, p);
    let table = c.create_table("t", b"v1".to_vec()).await.unwrap();
    let window_ms = 1000;
    c.register_parts("t", table.version, vec![part("p1", Some("b1"))], &["n1"], 10_000, window_ms).await.unwrap();
    let inside =
        c.register_parts("t", table.version, vec![part("p2", Some("b1"))], &["n1"], 11_000, window_ms).await.unwrap();
    assert!(
        matches!(inside.outcomes[0], PartOutcome::Duplicate { .. }),
        "exactly at the window's edge: still a duplicate"
    );
    let outside =
        c.register_parts("t", table.version, vec![part("p3", Some("b1"))], &["n1"], 11_001, window_ms).await.unwrap();
    assert!(matches!(outside.outcomes[0], PartOutcome::Registered { .. }), "past the window: admitted again");
    assert_eq!(c.get_block("t", "b1").await.unwrap().map(|(b, _)| b.part), Some(id("p3")));
    let again =
        c.register_parts("t", table.version, vec![part("p4", Some("b1"))], &["n1"], 11_500, window_ms).await.unwrap();
    assert!(
        matches!(again.outcomes[0], PartOutcome::Duplicate { ref existing_part, .. } if *existing_part == id("p3"))
    );
}

pub async fn old_blocks_are_pruned(kv: Arc<dyn KvBackend>, p: &str) {
    let c = Coordinator::new(kv, p);
    let table = c.create_table("t", b"v1".to_vec()).await.unwrap();
    for i in 0..5 {
        let block = format!("b{i}");
        c.register_parts("t", table.version, vec![part(&format!("p{i}"), Some(&block))], &["n1"], 1000 + i, i64::MAX)
            .await
            .unwrap();
    }
    assert_eq!(c.prune_blocks("t", 3).await.unwrap(), 2, "only the 3 newest block ids are kept");
    assert!(c.get_block("t", "b0").await.unwrap().is_none());
    assert!(c.get_block("t", "b1").await.unwrap().is_none());
    assert!(c.get_block("t", "b2").await.unwrap().is_some(), "the 3rd newest is kept");
    assert_eq!(c.prune_blocks("t", 3).await.unwrap(), 0, "nothing more to forget");
    let retried =
        c.register_parts("t", table.version, vec![part("p9", Some("b0"))], &["n1"], 5000, i64::MAX).await.unwrap();
    assert!(matches!(retried.outcomes[0], PartOutcome::Registered { .. }), "a forgotten block id is admitted again");
    assert_eq!(c.snapshot().await.unwrap().parts.len(), 6, "pruning block ids never touches parts");
}

pub async fn block_ids_expire_with_their_window(kv: Arc<dyn KvBackend>, p: &str) {
    let c = Coordinator::new(kv, p);
    let table = c.create_table("t", b"v1".to_vec()).await.unwrap();
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    for i in 0..3 {
        let block = format!("b{i}");
        c.register_parts("t", table.version, vec![part(&format!("p{i}"), Some(&block))], &["n1"], now(), 1000)
            .await
            .unwrap();
    }
    assert!(c.get_block("t", "b0").await.unwrap().is_some());
    // The store deletes them itself when the bucket's lease ends (window + one bucket).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while c.get_block("t", "b0").await.unwrap().is_some() || c.get_block("t", "b2").await.unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "block ids outlived their 1 s window by 15 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(c.snapshot().await.unwrap().parts.len(), 3, "expiry forgets block ids, never parts");
}

pub async fn one_leader_at_a_time_and_fenced(kv: Arc<dyn KvBackend>, p: &str) {
    let c = Coordinator::new(kv.clone(), p);
    let lease1 = kv.grant_lease(Duration::from_secs(30)).await.unwrap();
    let lease2 = kv.grant_lease(Duration::from_secs(30)).await.unwrap();
    let fence = c.acquire_leadership("gc", "n1", lease1).await.unwrap().expect("the first candidate leads");
    assert_eq!(
        c.acquire_leadership("gc", "n1", lease1).await.unwrap(),
        Some(fence),
        "a leader asking again still leads"
    );
    assert_eq!(c.acquire_leadership("gc", "n2", lease2).await.unwrap(), None, "a second candidate does not lead");
    assert_eq!(c.leader("gc").await.unwrap().as_deref(), Some("n1"));
    assert!(c.still_leader("gc", fence).await.unwrap());

    kv.revoke_lease(lease1).await.unwrap();
    assert!(!c.still_leader("gc", fence).await.unwrap(), "a leader whose lease ended is fenced off");
    let fence2 = c.acquire_leadership("gc", "n2", lease2).await.unwrap().expect("the next candidate takes over");
    assert!(fence2 > fence);
    assert!(!c.still_leader("gc", fence).await.unwrap(), "the old leader stays fenced after the takeover");
    assert!(c.still_leader("gc", fence2).await.unwrap());
    kv.revoke_lease(lease2).await.unwrap();
}

pub async fn merges_replace_their_sources_once(kv: Arc<dyn KvBackend>, p: &str) {
    let c = Coordinator::new(kv.clone(), p);
    let table = c.create_table("t", b"{}".to_vec()).await.unwrap();
    let registered = c
        .register_parts("t", table.version, vec![part("p1", Some("b1")), part("p2", Some("b2"))], &["n1"], 0, i64::MAX)
        .await
        .unwrap();
    let revision = registered.revision;
    c.add_holder("t", &id("p1"), "n2").await.unwrap();
    let lease = kv.grant_lease(Duration::from_secs(30)).await.unwrap();
    let fence = c.acquire_leadership("merge/t", "n1", lease).await.unwrap().unwrap();
    let from = c.current_revision().await.unwrap() + 1;
    let mut events = c.watch(from).await.unwrap();

    let merged = part("m1", None);
    let sources = vec![(id("p1"), revision), (id("p2"), revision)];
    let replaced = c.replace_parts("t", &sources, &merged, "n1", Some(("merge/t", fence))).await.unwrap();
    let replaced = replaced.expect("the first replacement succeeds");
    let batch = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("the replacement is watched within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(batch.revision, replaced, "the sources leave and the merged part arrives in one revision");
    let removed = batch.events.iter().filter(|e| matches!(e, ClusterEvent::PartRemoved { .. })).count();
    let added = batch.events.iter().filter(|e| matches!(e, ClusterEvent::PartAdded(_))).count();
    assert_eq!((removed, added), (2, 1), "{:?}", batch.events);
    let snapshot = c.snapshot().await.unwrap();
    let ids: Vec<_> = snapshot.parts.iter().map(|p| p.id).collect();
    assert_eq!(ids, [id("m1")]);
    let holders: Vec<_> = snapshot.holders.iter().map(|h| (h.part, h.node.as_str())).collect();
    assert_eq!(holders, [(id("m1"), "n1")], "the sources' holders went with them");
    assert_eq!(
        c.get_block("t", "b1").await.unwrap().unwrap().0.part,
        id("p1"),
        "block ids of merged parts still deduplicate"
    );

    let again = c.replace_parts("t", &sources, &part("m2", None), "n1", Some(("merge/t", fence))).await.unwrap();
    assert_eq!(again, None, "sources already merged away are not merged twice");
    let more = c.register_parts("t", table.version, vec![part("p3", None)], &["n1"], 0, i64::MAX).await.unwrap();
    let stale = c.drop_expired_parts("t", &[(id("p3"), more.revision - 1)], Some(("merge/t", fence))).await.unwrap();
    assert_eq!(stale, None, "a part is dropped only as it was read");
    let dropped = c.drop_expired_parts("t", &[(id("m1"), replaced)], Some(("merge/t", fence))).await.unwrap();
    assert!(dropped.is_some(), "the leader drops an expired part");
    let snapshot = c.snapshot().await.unwrap();
    assert_eq!(snapshot.parts.iter().map(|p| p.id).collect::<Vec<_>>(), [id("p3")]);
    assert!(snapshot.holders.iter().all(|h| h.part != id("m1")), "the dropped part's holders went with it");
    kv.revoke_lease(lease).await.unwrap();
    let fenced = c.drop_expired_parts("t", &[(id("p3"), more.revision)], Some(("merge/t", fence))).await.unwrap();
    assert_eq!(fenced, None, "a leader whose lease ended cannot drop parts");
    let fenced = c
        .replace_parts("t", &[(id("p3"), more.revision)], &part("m3", None), "n1", Some(("merge/t", fence)))
        .await
        .unwrap();
    assert_eq!(fenced, None, "a leader whose lease ended cannot register a merge");
}

fn user_write(name: &str, expected: Option<i64>, doc: Option<&str>) -> UserWrite {
    UserWrite { name: name.to_string(), expected, doc: doc.map(|d| d.as_bytes().to_vec()) }
}

pub async fn users_change_together_or_not_at_all(kv: Arc<dyn KvBackend>, p: &str) {
    let c = Coordinator::new(kv.clone(), p);
    let (none, listed_at) = c.list_users().await.unwrap();
    assert!(none.is_empty());
    let mut events = c.watch_users(listed_at + 1).await.unwrap();
    let created = c
        .write_users(vec![user_write("a", None, Some("a1")), user_write("b", None, Some("b1"))])
        .await
        .unwrap()
        .expect("creating two absent users succeeds");
    let (users, _) = c.list_users().await.unwrap();
    let listed: Vec<_> = users.iter().map(|u| (u.name.as_str(), u.doc.as_slice(), u.version)).collect();
    assert_eq!(listed, [("a", &b"a1"[..], created), ("b", &b"b1"[..], created)]);
    assert_eq!(
        c.write_users(vec![user_write("c", None, Some("c1")), user_write("a", None, Some("a2"))]).await.unwrap(),
        None,
        "creating an existing user fails"
    );
    assert!(c.get_user("c").await.unwrap().is_none(), "and nothing of that transaction is written");
    assert_eq!(
        c.write_users(vec![user_write("a", Some(created - 1), Some("a2"))]).await.unwrap(),
        None,
        "a stale version is refused"
    );
    let dropped = c
        .write_users(vec![user_write("a", Some(created), None), user_write("b", Some(created), Some("b2"))])
        .await
        .unwrap()
        .expect("a drop and an update at the versions read succeed");
    assert!(c.get_user("a").await.unwrap().is_none());
    assert_eq!(c.get_user("b").await.unwrap().unwrap().doc, b"b2");

    let mut seen = Vec::new();
    while seen.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("user changes are watched within 10 s")
            .unwrap()
            .unwrap();
        seen.push(batch);
    }
    assert_eq!(seen.iter().map(|(revision, _)| *revision).collect::<Vec<_>>(), [created, dropped]);
    let last: Vec<String> = seen[1]
        .1
        .iter()
        .map(|e| match e {
            UserEvent::Put(u) => format!("put {} {}", u.name, String::from_utf8_lossy(&u.doc)),
            UserEvent::Dropped { name } => format!("drop {name}"),
        })
        .collect();
    assert_eq!(last, ["drop a", "put b b2"]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EmbeddedKv;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_backend_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let kv = EmbeddedKv::open(dir.path().join("meta.redb")).await.unwrap();
        run_all(Arc::new(kv), "/conformance/").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_backend_persists_and_resumes_watches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        let revision = {
            let kv = EmbeddedKv::open(&path).await.unwrap();
            let long = kv.grant_lease(Duration::from_secs(60)).await.unwrap();
            let short = kv.grant_lease(Duration::from_secs(1)).await.unwrap();
            for (key, lease) in [("/p/long", long), ("/p/short", short)] {
                kv.txn(vec![], vec![TxnOp::Put { key: key.into(), value: b"x".to_vec(), lease: Some(lease) }], vec![])
                    .await
                    .unwrap();
            }
            kv.txn(vec![], vec![put("/p/kept", "y")], vec![]).await.unwrap().revision
        };
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let kv = EmbeddedKv::open(&path).await.unwrap();
        assert_eq!(kv.get("/p/kept").await.unwrap().unwrap().mod_revision, revision, "data survives a reopen");
        assert!(kv.get("/p/long").await.unwrap().is_some(), "a lease outlives a restart, as in etcd");
        assert!(kv.get("/p/short").await.unwrap().is_none(), "a lease that expired while closed takes its keys");
        let lease = kv.get("/p/long").await.unwrap().unwrap().lease;
        kv.keep_alive(lease).await.unwrap();
        kv.revoke_lease(lease).await.unwrap();
        assert!(kv.get("/p/long").await.unwrap().is_none());
        let mut stream = kv.watch("/p/", revision).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
        assert!(matches!(first, WatchResponse::Events { revision: r, .. } if r == revision));
    }
}
