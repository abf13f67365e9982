//! Access control at start: following the cluster's users, and the first user of a cluster
//! that has none. Secure by default: a node that anyone on the network can reach either has
//! users, creates its first one, or refuses to start unless told `--insecure`.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use tandem_access::{AccessControl, DEFAULT_USER, Password};
use tandem_replica::Replica;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::NodeConfig;

/// What decides how a node gets its first user (taken from its configuration).
pub(crate) struct FirstUserPolicy {
    http_addr: std::net::SocketAddr,
    insecure: bool,
    cluster: bool,
    admin_password: Option<Password>,
}

impl FirstUserPolicy {
    pub(crate) fn of(config: &NodeConfig) -> FirstUserPolicy {
        FirstUserPolicy {
            http_addr: config.http_addr,
            insecure: config.insecure,
            cluster: config.is_cluster(),
            admin_password: config.admin_password.clone(),
        }
    }
}

/// Where a single node keeps the password it generated for its first user.
pub const GENERATED_PASSWORD_FILE: &str = "default-password";

/// Starts following the cluster's users, then makes sure someone can sign in:
/// - with an admin password (`--admin-password-file`, `TANDEM_ADMIN_PASSWORD`) and no users
///   yet, creates `default` with every privilege;
/// - on loopback, or with `--insecure`, a node without users serves everyone as `default`;
/// - otherwise a single node generates a password for `default`, writes it to
///   `<data dir>/default-password` and prints it once; a cluster node refuses to start (the
///   nodes would each generate their own).
pub(crate) async fn start(
    policy: &FirstUserPolicy,
    replica: &Replica,
    shutdown: CancellationToken,
) -> anyhow::Result<(Arc<AccessControl>, JoinHandle<()>)> {
    let open_without_users = policy.http_addr.ip().is_loopback() || policy.insecure;
    let (access, follower) = AccessControl::start(replica.coordinator().clone(), open_without_users, shutdown)
        .await
        .context("cannot read the cluster's users from the coordinator")?;
    if let Some(password) = &policy.admin_password {
        if access.create_first_user(DEFAULT_USER, password).await? {
            tracing::info!(user = DEFAULT_USER, "created the first user from the admin password");
        }
    } else if !access.has_users() && !open_without_users {
        if policy.cluster {
            bail!(
                "this node serves HTTP on {}, which is not a loopback address, and the cluster has no users: \
                 give --admin-password-file (or TANDEM_ADMIN_PASSWORD) to create the first user, `default`, or \
                 start with --insecure to serve without authentication on a trusted network",
                policy.http_addr
            );
        }
        let (password, generated) = generated_password(replica.data_dir())?;
        if access.create_first_user(DEFAULT_USER, &password).await? && generated {
            let path = replica.data_dir().join(GENERATED_PASSWORD_FILE);
            // Printed once, to the terminal that started the node, not to the log.
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(
                stderr,
                "\ntandem created the user `{DEFAULT_USER}` with the password {}\n(also in {}; \
                 change it with ALTER USER {DEFAULT_USER} IDENTIFIED BY '...')\n",
                password.reveal(),
                path.display()
            );
        }
    }
    Ok((access, follower))
}

/// The first user's generated password: read from the data directory when an earlier start
/// wrote it, else generated and written there, readable by this user only.
fn generated_password(data_dir: &Path) -> anyhow::Result<(Password, bool)> {
    let path = data_dir.join(GENERATED_PASSWORD_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return Ok((Password::new(text.trim()), false));
    }
    let password = Password::generate().context("cannot generate a password")?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(password.reveal().as_bytes())?;
    file.sync_all()?;
    Ok((password, true))
}
