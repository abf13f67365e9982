//! Who can reach a node, and over what: HTTPS for the HTTP API with certificates renewed in
//! place. (The interserver secret is tested with the cluster, in `cluster.rs`.)

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tandem_tests::TlsFiles;

/// A `tandem serve` process, killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two unrelated CAs, each with a server certificate for 127.0.0.1, under `dir`.
fn two_cas(dir: &Path) -> (TlsFiles, TlsFiles) {
    let make = |name: &str| {
        let path = dir.join(name);
        std::fs::create_dir_all(&path).unwrap();
        TlsFiles::create(&path).unwrap()
    };
    (make("first"), make("second"))
}

/// Sends `sql` to the node at `addr` over HTTPS on a new connection, trusting only `ca`.
/// The body of a 200, or what went wrong (handshake, status).
async fn https_query(addr: SocketAddr, ca: &Path, sql: &str) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = hyper::Request::post("/")
        .header(hyper::header::HOST, addr.to_string())
        .body(Full::new(bytes::Bytes::from(sql.to_string())))
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    if status != hyper::StatusCode::OK {
        return Err(format!("{status}: {text}"));
    }
    Ok(text)
}

/// The API over HTTPS: a client that trusts the CA gets its answers, one that does not (and a
/// plain-HTTP one) gets nothing; when the certificate files are replaced, the node serves the
/// new certificate within seconds, without a restart.
#[tokio::test]
async fn https_serves_the_api_and_a_renewed_certificate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = two_cas(dir.path());
    // The files the node reads: the first certificate now, the second one after the renewal.
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(&old.server_cert, &cert).unwrap();
    std::fs::copy(&old.server_key, &key).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", tandem_tests::free_port()).parse().unwrap();
    let log = dir.path().join("tandem.log");
    let _node = Process(
        Command::new(tandem_tests::tandem_binary().unwrap())
            .arg("serve")
            .arg("--http-addr")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .env("TANDEM_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while https_query(addr, &old.ca, "SELECT 1").await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the node answers over HTTPS within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    https_query(addr, &old.ca, "CREATE TABLE t (id UInt64) ORDER BY id").await.unwrap();
    https_query(addr, &old.ca, "INSERT INTO t FORMAT CSV\n1\n2\n").await.unwrap();
    assert_eq!(https_query(addr, &old.ca, "SELECT count() FROM t").await.unwrap().trim(), "2");

    let untrusted = https_query(addr, &new.ca, "SELECT 1").await;
    assert!(untrusted.is_err_and(|e| e.contains("handshake")), "a client that does not trust the CA fails");
    let plain = reqwest::Client::new().post(format!("http://{addr}/")).body("SELECT 1").send().await;
    assert!(plain.is_err(), "plain HTTP gets no answer from an HTTPS port: {plain:?}");

    // Renewal: the files are replaced (as the kubelet updates a mounted Secret).
    std::fs::copy(&new.server_key, &key).unwrap();
    std::fs::copy(&new.server_cert, &cert).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while https_query(addr, &new.ca, "SELECT 1").await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the renewed certificate is served within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stale = https_query(addr, &old.ca, "SELECT 1").await;
    assert!(stale.is_err_and(|e| e.contains("handshake")), "the old certificate is no longer served");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("serving the renewed TLS certificate"), "{log}");

    // curl, trusting the CA; and not trusting it.
    let curl = |extra: &[&str]| {
        Command::new("curl")
            .args(["--silent", "--show-error", "--data-binary", "SELECT 1"])
            .args(extra)
            .arg(format!("https://{addr}/"))
            .output()
            .expect("curl runs")
    };
    let trusted = curl(&["--cacert", new.ca.to_str().unwrap()]);
    assert_eq!(String::from_utf8_lossy(&trusted.stdout).trim(), "1", "{}", String::from_utf8_lossy(&trusted.stderr));
    assert!(!curl(&[]).status.success(), "curl without the CA refuses the certificate");

    // ClickHouse's Python client with secure=True, trusting the CA; and not trusting it.
    let python = std::env::var("TANDEM_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let connect = |ca: &Path| {
        let script = format!(
            "import clickhouse_connect\nclient = clickhouse_connect.get_client(host='127.0.0.1', port={}, \
             secure=True, ca_cert='{}')\nprint(client.command('SELECT count() FROM t'))",
            addr.port(),
            ca.display()
        );
        Command::new(&python).args(["-c", &script]).output().expect("python runs")
    };
    let secure = connect(&new.ca);
    let stderr = String::from_utf8_lossy(&secure.stderr);
    assert_eq!(String::from_utf8_lossy(&secure.stdout).trim(), "2", "clickhouse-connect over HTTPS: {stderr}");
    assert!(!connect(&old.ca).status.success(), "clickhouse-connect refuses a certificate its CA did not sign");

    // `tandem drain` over HTTPS, trusting the CA (a lone node never drains: it answers 503 with
    // its report, which shows the request got through).
    let drain = |ca: &Path| {
        Command::new(tandem_tests::tandem_binary().unwrap())
            .args(["drain", "--http-addr", &addr.to_string(), "--timeout-seconds", "0", "--ca-file"])
            .arg(ca)
            .output()
            .unwrap()
    };
    let reached = drain(&new.ca);
    let report = String::from_utf8_lossy(&reached.stdout);
    assert!(report.contains("\"drained\":false"), "{report} {}", String::from_utf8_lossy(&reached.stderr));
    let refused = drain(&old.ca);
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && error.contains("TLS handshake"), "{error}");
}

/// A certificate without its key (or a key that does not match) stops the node at start with a
/// message naming the files, and never prints the key.
#[tokio::test]
async fn a_bad_tls_configuration_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (one, other) = two_cas(dir.path());
    let check = |args: &[&str]| {
        let output = Command::new(tandem_tests::tandem_binary().unwrap())
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{}", tandem_tests::free_port()))
            .args(args)
            .output()
            .unwrap();
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let cert = one.server_cert.to_str().unwrap();
    let (ok, stderr) = check(&["--tls-cert-file", cert]);
    assert!(!ok && stderr.contains("--tls-cert-file and --tls-key-file go together"), "{stderr}");
    let (ok, stderr) = check(&["--tls-cert-file", cert, "--tls-key-file", other.server_key.to_str().unwrap()]);
    assert!(!ok && stderr.contains("do not go together"), "{stderr}");
    let key = std::fs::read_to_string(&other.server_key).unwrap();
    let key_body = key.lines().nth(1).unwrap();
    assert!(!stderr.contains(key_body), "the key is never printed");
}

/// `--interserver-*` flags naming one CA's files: the CA, and a certificate and key it signed.
fn interserver_tls_args(files: &TlsFiles) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    vec![
        "--interserver-ca-file".into(),
        path(&files.ca),
        "--interserver-cert-file".into(),
        path(&files.server_cert),
        "--interserver-key-file".into(),
        path(&files.server_key),
    ]
}

/// Asks the node at `addr` for a part over TLS trusting `ca`, presenting `identity` (a client
/// certificate and key) if any, and the cluster secret. The part's bytes, or what failed.
async fn fetch_over_tls(
    addr: &str,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    secret: &str,
    part: &str,
) -> Result<Vec<u8>, String> {
    use tandem_proto::v1::FetchPartRequest;
    use tandem_proto::v1::interserver_client::InterserverClient;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(std::fs::read(cert).unwrap(), std::fs::read(key).unwrap()));
    }
    let endpoint = Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).unwrap();
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let mut request = tonic::Request::new(FetchPartRequest {
        format_version: tandem_proto::WIRE_FORMAT_VERSION,
        table: "t".into(),
        part_id: part.into(),
    });
    request.metadata_mut().insert(tandem_proto::SECRET_METADATA_KEY, secret.parse().unwrap());
    let mut stream =
        InterserverClient::new(channel).fetch_part(request).await.map_err(|e| format!("fetch: {e}"))?.into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await.map_err(|e| format!("stream: {e}"))? {
        bytes.extend_from_slice(&chunk.data);
    }
    Ok(bytes)
}

/// Interserver mutual TLS: nodes with certificates from the cluster's CA replicate to each other;
/// a client holding the cluster secret but no certificate from that CA, and a node whose
/// certificate another CA signed, are refused at the handshake and fetch nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interserver_mutual_tls_refuses_peers_without_a_certificate_from_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = two_cas(dir.path());
    let cluster = tandem_tests::Cluster::start_with(2, interserver_tls_args(&ours), Vec::new()).await.unwrap();
    let (n1, n2) = (&cluster.nodes[0], &cluster.nodes[1]);
    n1.sql("CREATE TABLE t (id UInt64) ORDER BY id").await;
    let summary = n1.insert("t", "CSV", "1\n2\n").await;
    let part = summary["parts"][0]["part"].as_str().unwrap().to_string();
    n2.wait_for("SELECT count() FROM t", "2", Duration::from_secs(30)).await;

    let addr = n1.grpc_addr.as_str();
    let with_ours = fetch_over_tls(addr, &ours.ca, Some((&ours.client_cert, &ours.client_key)), &cluster.secret, &part);
    let bytes = with_ours.await.expect("a certificate from the cluster's CA and the secret fetch the part");
    assert_eq!(blake3::hash(&bytes).to_hex().as_str(), part);
    let anonymous = fetch_over_tls(addr, &ours.ca, None, &cluster.secret, &part).await;
    assert!(anonymous.is_err(), "no client certificate, even with the secret: refused");
    let foreign =
        fetch_over_tls(addr, &ours.ca, Some((&theirs.client_cert, &theirs.client_key)), &cluster.secret, &part);
    assert!(foreign.await.is_err(), "a certificate from another CA: refused");
    let plain = tandem_proto::v1::interserver_client::InterserverClient::connect(format!("http://{addr}")).await;
    if let Ok(mut client) = plain {
        let request = tandem_proto::v1::StatusRequest { format_version: tandem_proto::WIRE_FORMAT_VERSION };
        assert!(client.status(request).await.is_err(), "plain gRPC gets no answer from a TLS port");
    }

    // A node whose certificate another CA signed joins the metadata but gets no part from a peer.
    let stranger_args = interserver_tls_args(&theirs);
    let stranger_args: Vec<&str> = stranger_args.iter().map(String::as_str).collect();
    let mut stranger = cluster.node_with_own_flags(3, true, &stranger_args).unwrap();
    stranger.ensure_running().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stranger.metric("tandem_fetch_failures_total").await < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "the stranger's fetch never failed: {}", stranger.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let parts = std::fs::read_dir(stranger.data_dir.join("parts")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(parts, 0, "the stranger fetched nothing");
}
