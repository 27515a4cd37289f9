//! A throwaway PostgreSQL server: `initdb` into a temporary folder, started on a free port of
//! 127.0.0.1, stopped and deleted when dropped, also when its test fails or panics. The fault
//! suite's scenarios stop, restart or disturb it, never a shared server; tests that need a
//! server set up their own way (TLS only, say) make one.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::Command;

mod bouncer;

pub use bouncer::{Bouncer, SERVER_CONNECTIONS};

/// Where PostgreSQL's binaries are: `$PQ_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout, which `.ci/ensure-postgres` installs).
fn binaries() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("PQ_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: install PostgreSQL (bash .ci/ensure-postgres) or set PQ_PG_BIN")?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!("no PostgreSQL with initdb under /usr/lib/postgresql; set PQ_PG_BIN"),
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Whether this process runs as root, where initdb refuses to run and `runuser` is needed.
fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// What differs from PostgreSQL's default configuration, printed with every scenario: nothing
/// but the address. Commits are durable (`synchronous_commit=on`, `fsync=on`), as users have
/// them: a promise proved only with asynchronous commits would not be proved.
pub const SETTINGS: &str = "listen_addresses=127.0.0.1";

/// The prefix of the servers' folders in the system's temporary folder: `<prefix><pid>-<label>`.
const PREFIX: &str = "pq-pgserver-";

/// One PostgreSQL server of our own.
pub struct Server {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
    /// Settings beside [`SETTINGS`], as `name=value`.
    settings: Vec<String>,
}

impl Server {
    /// Creates a cluster in a fresh folder under the system's temporary folder and starts it.
    /// Configuration is PostgreSQL's default except for [`SETTINGS`], and initdb runs with
    /// `--no-sync` (the new cluster's files are not flushed to disk; nothing depends on that).
    pub async fn start(label: &str) -> Result<Server> {
        Self::start_with(label, |_| Ok(Vec::new())).await
    }

    /// As [`start`](Server::start), but `setup` may first write files into the new cluster's
    /// data folder (a certificate, `pg_hba.conf`) and returns settings (`name=value`, paths
    /// relative to that folder) for the server to start with.
    pub async fn start_with(
        label: &str,
        setup: impl FnOnce(&Path) -> Result<Vec<String>>,
    ) -> Result<Server> {
        let root = std::env::temp_dir().join(format!("{PREFIX}{}-{label}", std::process::id()));
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        std::fs::create_dir_all(&root)?;
        let mut server = Server {
            root,
            bin: binaries()?,
            port: 0,
            as_postgres: is_root(),
            running: false,
            settings: Vec::new(),
        };
        if server.as_postgres {
            run(Command::new("chown")
                .arg("postgres:postgres")
                .arg(&server.root))
            .await?;
        }
        let data = server.data();
        server
            .run_pg(
                "initdb",
                &[
                    "-D",
                    path_str(&data)?,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
            )
            .await
            .context("initdb")?;
        server.settings = setup(&data)?;
        if server.as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data))
            .await?;
        }
        // Another program may take the port between our look and the server's bind: try again.
        let mut last = None;
        for _ in 0..3 {
            server.port = free_port()?;
            match server.start_again().await {
                Ok(()) => return Ok(server),
                Err(error) => last = Some(error),
            }
        }
        Err(last.expect("tried at least once"))
    }

    /// As [`start`](Server::start), but taking TLS connections only (on 127.0.0.1; the
    /// Unix socket stays open), with a certificate for 127.0.0.1 and localhost signed by a CA
    /// made for this server, whose certificate is [`ca_certificate`](Server::ca_certificate).
    /// Runs `openssl`.
    pub async fn start_tls_only(label: &str) -> Result<Server> {
        Self::start_with(label, |data| {
            let root = data.parent().context("a data folder has a parent")?;
            // webpki refuses a CA's certificate as a server's, so there are two.
            openssl(
                root,
                "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=pq-test-CA -keyout ca.key -out ca.crt",
            )?;
            openssl(
                root,
                "req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr",
            )?;
            std::fs::write(
                root.join("server.ext"),
                "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
            )?;
            openssl(
                root,
                "x509 -req -days 2 -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -extfile server.ext -out server.crt",
            )?;
            for file in ["server.crt", "server.key"] {
                std::fs::copy(root.join(file), data.join(file))?;
            }
            use std::os::unix::fs::PermissionsExt;
            let private = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(data.join("server.key"), private)?;
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\n\
                 hostssl all all 127.0.0.1/32 trust\n\
                 hostnossl all all 127.0.0.1/32 reject\n",
            )?;
            Ok(["ssl=on", "ssl_cert_file=server.crt", "ssl_key_file=server.key"]
                .map(str::to_owned)
                .to_vec())
        })
        .await
    }

    /// The certificate of the CA that signed a [`start_tls_only`](Server::start_tls_only)
    /// server's: trust it (`sslrootcert`) to verify the server.
    pub fn ca_certificate(&self) -> PathBuf {
        self.root.join("ca.crt")
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The connection URL of the `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the stopped server again, on the same port.
    pub async fn start_again(&mut self) -> Result<()> {
        let mut options = format!("-p {} -k {}", self.port, path_str(&self.root)?);
        for setting in SETTINGS
            .split(' ')
            .chain(self.settings.iter().map(String::as_str))
        {
            options.push_str(" -c ");
            options.push_str(setting);
        }
        let data = self.data();
        let log = self.root.join("postgres.log");
        self.run_pg(
            "pg_ctl",
            &[
                "-D",
                path_str(&data)?,
                "-l",
                path_str(&log)?,
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .await
        .with_context(|| format!("pg_ctl start; see {}", log.display()))?;
        self.running = true;
        Ok(())
    }

    /// Crashes the server (`pg_ctl stop -m immediate`: every process quits at once, nothing is
    /// flushed, and the next start recovers from the WAL), as a power cut or an OOM kill would.
    pub async fn crash(&mut self) -> Result<()> {
        let data = self.data();
        self.run_pg(
            "pg_ctl",
            &["-D", path_str(&data)?, "-m", "immediate", "-w", "stop"],
        )
        .await?;
        self.running = false;
        Ok(())
    }

    /// Freezes every process of the server (SIGSTOP): it accepts connections and answers
    /// nothing, as a server that hangs does.
    pub async fn freeze(&self) -> Result<()> {
        self.signal_all("STOP").await
    }

    /// Lets a frozen server go on (SIGCONT).
    pub async fn thaw(&self) -> Result<()> {
        self.signal_all("CONT").await
    }

    /// Sends `signal` to the postmaster and its children.
    async fn signal_all(&self, signal: &str) -> Result<()> {
        let pid_file = std::fs::read_to_string(self.data().join("postmaster.pid"))?;
        let postmaster = pid_file
            .lines()
            .next()
            .context("an empty postmaster.pid")?
            .trim()
            .to_owned();
        let children = Command::new("pgrep")
            .args(["-P", &postmaster])
            .output()
            .await
            .context("pgrep")?;
        let mut pids = vec![postmaster];
        pids.extend(
            String::from_utf8_lossy(&children.stdout)
                .split_whitespace()
                .map(str::to_owned),
        );
        // The postmaster first when freezing, so that it forks nothing meanwhile; last when
        // thawing, so that it finds its children running.
        if signal == "CONT" {
            pids.reverse();
        }
        for pid in pids {
            run(Command::new("kill").args(["-s", signal, &pid])).await?;
        }
        Ok(())
    }

    async fn run_pg(&self, program: &str, args: &[&str]) -> Result<()> {
        let program = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        // The postgres user may not be allowed into the caller's folder.
        command.args(args).current_dir(&self.root);
        run(&mut command).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.running {
            stop_now(&self.bin, &self.root, self.as_postgres);
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// `pg_ctl stop -m immediate` on the cluster in `root`, waiting for it, ignoring failures.
fn stop_now(bin: &Path, root: &Path, as_postgres: bool) {
    let program = bin.join("pg_ctl");
    let mut command = if as_postgres {
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        std::process::Command::new(program)
    };
    let _ = command
        .arg("-D")
        .arg(root.join("data"))
        .args(["-m", "immediate", "-w", "-t", "30", "stop"])
        .current_dir(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Stops and deletes the servers of earlier processes that died without cleaning up (killed
/// with SIGKILL, say): folders `pq-pgserver-<pid>-<label>` whose process is gone.
pub fn reap_orphans() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let Ok(bin) = binaries() else {
        return;
    };
    let as_postgres = is_root();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let root = entry.path();
        if root.join("data").join("postmaster.pid").exists() {
            stop_now(&bin, &root, as_postgres);
        }
        println!("removed {}, left by a process that died", root.display());
        let _ = std::fs::remove_dir_all(&root);
    }
}

/// Runs `openssl ARGS` (split at spaces) in `folder`.
fn openssl(folder: &Path, args: &str) -> Result<()> {
    let made = std::process::Command::new("openssl")
        .args(args.split(' '))
        .current_dir(folder)
        .output()
        .context("cannot run openssl: install it (.ci/run does)")?;
    if !made.status.success() {
        bail!(
            "openssl {args} failed: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    Ok(())
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

async fn run(command: &mut Command) -> Result<()> {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        command.stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .context("timed out after 120 s")??;
    if !output.status.success() {
        bail!(
            "{:?} failed ({}): {}{}",
            command.as_std().get_program(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
