//! The suite's own processes: this binary started again as `worker` or `producer`, each with its
//! output in a log file of its own. Children are killed when their handle is dropped, so a
//! failing scenario leaves nothing running.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::{Child, ChildStdin, Command};

/// How a worker process is configured (see `child::worker`).
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub concurrency: usize,
    pub lease: Duration,
    pub poll: Duration,
    pub grace: Duration,
    pub keep_completed: bool,
    /// Queues to work, instead of the suite's default one.
    pub queues: Vec<String>,
    /// Drop the worker's future after this long, instead of running until SIGTERM.
    pub drop_after: Option<Duration>,
    /// Define the `cron` scenario's every-second schedule.
    pub every_second: bool,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            lease: Duration::from_secs(10),
            poll: Duration::from_secs(1),
            grace: Duration::from_secs(30),
            keep_completed: false,
            queues: Vec::new(),
            drop_after: None,
            every_second: false,
        }
    }
}

/// How a producer process is configured (see `child::producer`).
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    pub jobs: u64,
    /// Jobs a second; 0 for as fast as it can.
    pub rate: f64,
    pub work_ms: u32,
    pub deadline: Duration,
}

/// Starts processes against one database and schema, logging into one folder.
pub struct Fleet {
    exe: PathBuf,
    url: String,
    direct: Option<String>,
    schema: String,
    logs: PathBuf,
    started: usize,
}

/// A running child.
pub struct Proc {
    pub name: String,
    pub pid: u32,
    pub ledger: Option<PathBuf>,
    pub log: PathBuf,
    child: Child,
    /// The child's stdin, open while this handle lives: the child exits when it closes. Kept
    /// apart from `child`, whose `wait` would close it (and so stop a child mid-shutdown).
    _stdin: Option<ChildStdin>,
}

impl Fleet {
    /// Processes on the server at `url`; or, with `direct` (the server's own URL), behind the
    /// transaction pooler at `url`.
    pub fn new(url: &str, direct: Option<String>, schema: &str, logs: &Path) -> Result<Fleet> {
        Ok(Fleet {
            exe: std::env::current_exe().context("cannot find this program to start it again")?,
            url: url.to_owned(),
            direct,
            schema: schema.to_owned(),
            logs: logs.to_owned(),
            started: 0,
        })
    }

    /// Starts a worker process.
    pub fn worker(&mut self, options: &WorkerOptions) -> Result<Proc> {
        let mut args = vec![
            "worker".to_owned(),
            "--concurrency".to_owned(),
            options.concurrency.to_string(),
            "--lease-ms".to_owned(),
            options.lease.as_millis().to_string(),
            "--poll-ms".to_owned(),
            options.poll.as_millis().to_string(),
            "--grace-ms".to_owned(),
            options.grace.as_millis().to_string(),
        ];
        if options.keep_completed {
            args.push("--keep-completed".to_owned());
        }
        for queue in &options.queues {
            args.push("--queue".to_owned());
            args.push(queue.clone());
        }
        if options.every_second {
            args.push("--every-second".to_owned());
        }
        if let Some(after) = options.drop_after {
            args.push("--drop-after-ms".to_owned());
            args.push(after.as_millis().to_string());
        }
        self.spawn("worker", args, None)
    }

    /// Starts producer number `producer`, whose ledger goes into the log folder.
    pub fn producer(&mut self, producer: i64, options: &ProducerOptions) -> Result<Proc> {
        let ledger = self.logs.join(format!("ledger-{producer}.txt"));
        let args = vec![
            "producer".to_owned(),
            "--producer".to_owned(),
            producer.to_string(),
            "--jobs".to_owned(),
            options.jobs.to_string(),
            "--rate".to_owned(),
            options.rate.to_string(),
            "--work-ms".to_owned(),
            options.work_ms.to_string(),
            "--deadline-s".to_owned(),
            options.deadline.as_secs().to_string(),
            "--ledger".to_owned(),
            ledger
                .to_str()
                .context("log folder is not UTF-8")?
                .to_owned(),
        ];
        self.spawn("producer", args, Some(ledger))
    }

    fn spawn(
        &mut self,
        kind: &str,
        mut args: Vec<String>,
        ledger: Option<PathBuf>,
    ) -> Result<Proc> {
        self.started += 1;
        let name = format!("{kind}-{}", self.started);
        let log_path = self.logs.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)?;
        args.extend(["--url".to_owned(), self.url.clone()]);
        if let Some(direct) = &self.direct {
            args.extend(["--direct-url".to_owned(), direct.clone()]);
        }
        args.extend(["--schema".to_owned(), self.schema.clone()]);
        let mut child = Command::new(&self.exe)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let pid = child.id().context("the child exited at once")?;
        Ok(Proc {
            name,
            pid,
            ledger,
            log: log_path,
            _stdin: child.stdin.take(),
            child,
        })
    }
}

impl Proc {
    /// Sends `signal` (`KILL`, `TERM`, `STOP`, `CONT`) with kill(1): the workspace forbids
    /// `unsafe`, and so a direct `kill(2)`.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &self.pid.to_string()])
            .status()
            .context("cannot run kill(1)")?;
        if !status.success() {
            bail!("kill -s {signal} {} failed", self.pid);
        }
        Ok(())
    }

    /// Waits for the process to exit, at most `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!(
                "{} (pid {}) did not exit within {timeout:?}",
                self.name,
                self.pid
            ),
        }
    }

    /// Whether the process has exited, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL, and reaps it.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}
