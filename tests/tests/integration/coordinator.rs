//! The coordinator conformance suite against a real etcd (the embedded backend runs the same
//! suite in the coordinator crate's unit tests).

use std::sync::Arc;

use tandem_coordinator::{EtcdKv, conformance};
use tandem_tests::Etcd;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_backend_conforms() {
    let etcd = Etcd::start().await.expect("etcd starts");
    let kv = EtcdKv::connect(std::slice::from_ref(&etcd.endpoint)).await.expect("etcd connects");
    conformance::run_all(Arc::new(kv), "/conformance/").await;
}
