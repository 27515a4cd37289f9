//! A throwaway PgBouncer in transaction pooling mode, in front of a PostgreSQL server: each
//! transaction gets whichever server connection is free, as in production behind one.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{free_port, is_root, run, PREFIX};

/// Where Debian's `pgbouncer` package puts it, unless `$PQ_PGBOUNCER` says otherwise.
const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// How many server connections the bouncer opens at most: fewer than a test suite's clients,
/// so that they share them as a fleet of workers would.
pub const SERVER_CONNECTIONS: u32 = 20;

/// One PgBouncer of our own, stopped and deleted when dropped.
pub struct Bouncer {
    root: PathBuf,
    port: u16,
    child: std::process::Child,
}

impl Bouncer {
    /// Starts PgBouncer (1.18, Debian's, or `$PQ_PGBOUNCER`) on a free port of 127.0.0.1, in
    /// `pool_mode = transaction`, trusting user `postgres`, for every database of the server
    /// on 127.0.0.1:`upstream`, with at most [`SERVER_CONNECTIONS`] to it.
    pub async fn start(label: &str, upstream: u16) -> Result<Bouncer> {
        let program = std::env::var("PQ_PGBOUNCER").unwrap_or_else(|_| PGBOUNCER.to_owned());
        let root =
            std::env::temp_dir().join(format!("{PREFIX}{}-bouncer-{label}", std::process::id()));
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        std::fs::create_dir_all(&root)?;
        std::fs::write(root.join("users.txt"), "\"postgres\" \"\"\n")?;
        let mut last = None;
        for _ in 0..3 {
            let port = free_port()?;
            // sqlx sets extra_float_digits at startup, which PgBouncer refuses unless told to
            // ignore it.
            let config = format!(
                "[databases]\n* = host=127.0.0.1 port={upstream}\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {users}\n\
                 pool_mode = transaction\ndefault_pool_size = {SERVER_CONNECTIONS}\n\
                 max_client_conn = 2000\nignore_startup_parameters = extra_float_digits\n\
                 server_reset_query =\nserver_check_delay = 0\n",
                users = root.join("users.txt").display(),
            );
            std::fs::write(root.join("pgbouncer.ini"), config)?;
            if is_root() {
                run(tokio::process::Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&root))
                .await?;
            }
            // PgBouncer refuses to run as root. setpriv execs it (runuser would fork), so that
            // the child to kill is PgBouncer itself.
            let mut command = if is_root() {
                let mut command = std::process::Command::new("setpriv");
                command.args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    &program,
                ]);
                command
            } else {
                std::process::Command::new(&program)
            };
            let log = std::fs::File::create(root.join("pgbouncer.log"))?;
            let mut child = command
                .arg(root.join("pgbouncer.ini"))
                .current_dir(&root)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| {
                    format!("cannot run {program}: install pgbouncer (.ci/run does)")
                })?;
            match wait_until_listening(&mut child, &root, port).await {
                Ok(()) => return Ok(Bouncer { root, port, child }),
                Err(error) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = Some(error);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&root);
        Err(last.expect("tried at least once"))
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of `database` through it, as user `postgres`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

async fn wait_until_listening(
    child: &mut std::process::Child,
    root: &Path,
    port: u16,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(root.join("pgbouncer.log")).unwrap_or_default();
            bail!("pgbouncer exited ({status}): {log}");
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("pgbouncer did not listen on port {port} within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
