//! What each subcommand does: one admin call (or a loop of batches), then its output.

use std::io::Write;

use anyhow::{bail, Context as _};
use pq_core::{Admin, DependencyInfo, Enqueue, JobId, JobInfo, JobState, NewJob, Pq, WorkflowId};
use pq_worker::{Registry, Worker};
use serde_json::json;

use crate::args::{ids, Cli, Command, Cron, Filter, Flows, Jobs, Queues};
use crate::output::{self, Progress, Table};

/// The pool of a one-shot command: one statement at a time.
const ADMIN_CONNECTIONS: u32 = 2;

/// The longest `last_error` shown in a table.
const ERROR_WIDTH: usize = 60;

pub(crate) async fn run(cli: &Cli, registry: &Registry, out: &mut Vec<u8>) -> anyhow::Result<()> {
    // Bad arguments are reported before connecting: they are wrong whether or not the database
    // is up.
    if let Command::Enqueue { args, .. } = &cli.command {
        json_object(args)?;
    }
    if let Command::Work { .. } = &cli.command {
        if registry.is_empty() {
            bail!(
                "this program registers no task, so it has nothing to work on: `work` runs in \
                 your application's own binary, whose main calls pq_cli::main()"
            );
        }
    }
    let connections = match &cli.command {
        Command::Work { concurrency, .. } => concurrency.saturating_add(4).min(100),
        _ => ADMIN_CONNECTIONS,
    };
    let pq = crate::connect(cli, connections).await?;
    let admin = pq.admin();
    match &cli.command {
        Command::Migrate => migrate(cli, &pq, out).await,
        Command::Status => status(cli, &admin, out).await,
        Command::Workers => workers(cli, &admin, out).await,
        Command::Queues(Queues::Pause { queue }) => pause(cli, &admin, queue, true, out).await,
        Command::Queues(Queues::Resume { queue }) => pause(cli, &admin, queue, false, out).await,
        Command::Queues(Queues::Limit {
            queue,
            max_running,
            rate,
            burst,
        }) => limit(cli, &pq, queue, *max_running, rate.as_deref(), *burst, out).await,
        Command::Queues(Queues::Limits) => limits(cli, &admin, out).await,
        Command::Queues(Queues::ForgetPolicy { task }) => {
            let forgotten = admin.forget_task_policy(task).await?;
            if cli.json {
                return output::json(out, &json!({"task": task, "forgotten": forgotten}));
            }
            match forgotten {
                true => writeln!(out, "forgot {task}'s policy: its jobs run without it")?,
                false => writeln!(out, "{task} has no policy")?,
            }
            Ok(())
        }
        Command::Cron(command) => cron(cli, &admin, command, out).await,
        Command::Jobs(jobs) => match jobs {
            Jobs::List {
                filter,
                state,
                after,
                limit,
            } => list(cli, &admin, filter, *state, *after, *limit, out).await,
            Jobs::Show { id } => show(cli, &admin, JobId(*id), out).await,
            Jobs::Retry {
                ids: list,
                all: true,
                filter,
                batch_size,
            } if list.is_empty() => retry_all(cli, &admin, filter, *batch_size, out).await,
            Jobs::Retry { ids: list, .. } => act(cli, &admin, Action::Retry, &ids(list), out).await,
            Jobs::Cancel {
                ids: list,
                all: true,
                filter,
                state,
                batch_size,
            } if list.is_empty() => cancel_all(cli, &admin, filter, *state, *batch_size, out).await,
            Jobs::Cancel { ids: list, .. } => {
                act(cli, &admin, Action::Cancel, &ids(list), out).await
            }
            Jobs::Delete { ids: list } => act(cli, &admin, Action::Delete, &ids(list), out).await,
        },
        Command::Flows(Flows::Show { id }) => flow(cli, &admin, WorkflowId(*id), out).await,
        Command::Prune {
            older_than,
            batch_size,
        } => prune(cli, &admin, *older_than, *batch_size, out).await,
        Command::Enqueue {
            task,
            args,
            queue,
            schedule_at,
        } => {
            enqueue(
                cli,
                &pq,
                registry,
                task,
                args,
                queue.as_deref(),
                *schedule_at,
                out,
            )
            .await
        }
        Command::Work {
            queues,
            queue_lists,
            concurrency,
            burst,
            lease,
            grace_period,
            log,
        } => {
            // A program that installed its own subscriber keeps it.
            let _ = tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_max_level(*log)
                .try_init();
            let mut worker = Worker::new(pq.clone())
                .registry(registry.clone())
                .concurrency(usize::try_from(*concurrency).unwrap_or(usize::MAX));
            if !queues.is_empty() || !queue_lists.is_empty() {
                worker = worker.queues(queues.iter().chain(queue_lists).cloned());
            }
            if *burst {
                worker = worker.burst();
            }
            if let Some(lease) = *lease {
                worker = worker.lease(lease);
            }
            if let Some(grace) = *grace_period {
                worker = worker.grace_period(grace);
            }
            let report = worker.run().await?;
            writeln!(out, "{report}")?;
            Ok(())
        }
    }
}

async fn migrate(cli: &Cli, pq: &Pq, out: &mut Vec<u8>) -> anyhow::Result<()> {
    pq.create()
        .await
        .with_context(|| format!("cannot migrate {}", pq.table()))?;
    let versions: Vec<i64> = pq_core::MIGRATIONS.iter().map(|m| m.version).collect();
    if cli.json {
        output::json(out, &json!({"table": pq.table(), "migrations": versions}))
    } else {
        writeln!(
            out,
            "{} is up to date (migration {})",
            pq.table(),
            versions.last().copied().unwrap_or(0)
        )?;
        Ok(())
    }
}

async fn status(cli: &Cli, admin: &Admin, out: &mut Vec<u8>) -> anyhow::Result<()> {
    let stats = admin.stats().await?;
    if cli.json {
        return output::json(out, &stats);
    }
    if stats.is_empty() {
        writeln!(out, "no jobs")?;
        return Ok(());
    }
    let mut table = Table::new(&[
        "QUEUE",
        ">READY",
        ">SCHEDULED",
        ">RUNNING",
        ">FAILED",
        ">DONE",
        ">CANCELLED",
        ">WAITING",
        "OLDEST READY",
        "PAUSED",
    ]);
    for queue in &stats {
        table.row(vec![
            queue.queue.clone(),
            queue.ready.to_string(),
            queue.scheduled.to_string(),
            queue.running.to_string(),
            queue.failed.to_string(),
            queue.done.to_string(),
            queue.cancelled.to_string(),
            queue.waiting.to_string(),
            output::age(queue.oldest_ready),
            if queue.paused { "yes" } else { "-" }.to_owned(),
        ]);
    }
    table.print(out)?;
    // Jobs of a task no live worker registered wait (a rolling deploy, a task renamed): say so.
    if stats.iter().any(|queue| queue.ready > 0) {
        let unrunnable = admin.unrunnable().await?;
        if !unrunnable.is_empty() {
            writeln!(
                out,
                "\nready jobs that no live worker of their queue can run (none registered their task):"
            )?;
            let mut table = Table::new(&["QUEUE", "TASK", ">JOBS", "OLDEST READY"]);
            for group in unrunnable {
                table.row(vec![
                    group.queue,
                    group.task.unwrap_or_else(|| "(none)".to_owned()),
                    group.jobs.to_string(),
                    output::age(group.oldest_ready),
                ]);
            }
            table.print(out)?;
        }
    }
    Ok(())
}

/// Pauses `queue`, or resumes it.
async fn pause(
    cli: &Cli,
    admin: &Admin,
    queue: &str,
    pause: bool,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let changed = if pause {
        admin.pause(queue).await?
    } else {
        admin.resume(queue).await?
    };
    if cli.json {
        return output::json(
            out,
            &json!({"queue": queue, "paused": pause, "changed": changed}),
        );
    }
    match (pause, changed) {
        (true, true) => writeln!(out, "paused {queue}: no worker starts its jobs")?,
        (true, false) => writeln!(out, "{queue} was paused already")?,
        (false, true) => writeln!(out, "resumed {queue}")?,
        (false, false) => writeln!(out, "{queue} was not paused")?,
    }
    Ok(())
}

/// Sets `queue`'s limits, lifting those not given.
async fn limit(
    cli: &Cli,
    pq: &Pq,
    queue: &str,
    max_running: Option<u32>,
    rate: Option<&str>,
    burst: Option<u32>,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let mut limits = pq.queue(queue).limits();
    if let Some(max_running) = max_running {
        limits = limits.max_running(max_running);
    }
    if let Some(rate) = rate {
        limits = limits.rate(rate);
    }
    if let Some(burst) = burst {
        limits = limits.burst(burst);
    }
    limits.apply().await?;
    if cli.json {
        return output::json(
            out,
            &json!({"queue": queue, "max_running": max_running, "rate": rate, "burst": burst}),
        );
    }
    let mut said = Vec::new();
    if let Some(max_running) = max_running {
        said.push(format!("at most {max_running} running"));
    }
    if let Some(rate) = rate {
        let burst = burst.map(|b| format!(", {b} at once")).unwrap_or_default();
        said.push(format!("at most {rate}{burst}"));
    }
    match said.as_slice() {
        [] => writeln!(out, "{queue} has no limits of its own")?,
        _ => writeln!(
            out,
            "limited {queue}: {}, over every worker",
            said.join(", ")
        )?,
    }
    Ok(())
}

/// Every policy, queues' and tasks', with what runs now.
async fn limits(cli: &Cli, admin: &Admin, out: &mut Vec<u8>) -> anyhow::Result<()> {
    let limits = admin.limits().await?;
    if cli.json {
        return output::json(out, &limits);
    }
    if limits.is_empty() {
        writeln!(out, "no limits")?;
        return Ok(());
    }
    let mut table = Table::new(&[
        "KIND",
        "NAME",
        "QUEUE",
        ">MAX RUNNING",
        "RATE",
        ">BURST",
        ">RUNNING",
    ]);
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
    for limit in limits {
        let max_running = match (limit.max_running, limit.per_key, limit.sequence) {
            (_, _, Some(sequence)) => {
                Some(format!("1 a key, in order ({sequence:?})").to_lowercase())
            }
            (Some(n), true, _) => Some(format!("{n} a key")),
            (n, false, _) => n.map(|n| n.to_string()),
            (None, true, _) => None,
        };
        table.row(vec![
            limit.kind.to_owned(),
            limit.name,
            limit.queue,
            or_dash(max_running),
            or_dash(match limit.per_key {
                true => limit.rate.map(|rate| format!("{rate} a key")),
                false => limit.rate,
            }),
            or_dash(limit.burst.map(|b| b.to_string())),
            limit.running.to_string(),
        ]);
    }
    table.print(out)?;
    Ok(())
}

async fn cron(cli: &Cli, admin: &Admin, command: &Cron, out: &mut Vec<u8>) -> anyhow::Result<()> {
    let (name, verb, changed) = match command {
        Cron::List => return schedules(cli, admin, out).await,
        Cron::Pause { name } => (name, "paused", admin.pause_schedule(name).await?),
        Cron::Resume { name } => (name, "resumed", admin.resume_schedule(name).await?),
        Cron::Delete { name } => (name, "deleted", Some(admin.delete_schedule(name).await?)),
        Cron::Trigger { name } => {
            let Some(job) = admin.trigger_schedule(name).await? else {
                bail!("no schedule is named `{name}`: `cron list` shows them");
            };
            if cli.json {
                return output::json(out, &json!({"schedule": name, "job": job}));
            }
            writeln!(out, "triggered {name}: job {job}")?;
            return Ok(());
        }
    };
    // Deleting says whether there was one; pausing and resuming, whether it changed.
    let Some(changed) = changed.filter(|&changed| verb != "deleted" || changed) else {
        bail!("no schedule is named `{name}`: `cron list` shows them");
    };
    if cli.json {
        return output::json(
            out,
            &json!({"schedule": name, verb: true, "changed": changed}),
        );
    }
    if changed {
        writeln!(out, "{verb} {name}")?;
    } else {
        writeln!(out, "{name} was {verb} already")?;
    }
    Ok(())
}

async fn schedules(cli: &Cli, admin: &Admin, out: &mut Vec<u8>) -> anyhow::Result<()> {
    let schedules = admin.schedules().await?;
    if cli.json {
        return output::json(out, &schedules);
    }
    if schedules.is_empty() {
        writeln!(out, "no schedules")?;
        return Ok(());
    }
    let mut table = Table::new(&[
        "NAME",
        "CRON",
        "ZONE",
        "ON MISSED",
        "QUEUE",
        "NEXT",
        "LAST",
        "STATE",
    ]);
    for schedule in &schedules {
        let state = match (schedule.paused_at, schedule.orphaned) {
            (Some(_), true) => "paused, orphaned",
            (Some(_), false) => "paused",
            (None, true) => "orphaned",
            (None, false) => "active",
        };
        table.row(vec![
            output::truncate(&schedule.name, 40),
            schedule.expression.clone(),
            schedule.timezone.clone(),
            schedule.on_missed.clone(),
            output::truncate(&schedule.queue, 20),
            output::time(Some(schedule.next_at)),
            output::time(schedule.last_at),
            state.to_owned(),
        ]);
    }
    table.print(out)?;
    Ok(())
}

async fn workers(cli: &Cli, admin: &Admin, out: &mut Vec<u8>) -> anyhow::Result<()> {
    let workers = admin.workers().await?;
    if cli.json {
        return output::json(out, &workers);
    }
    if workers.is_empty() {
        writeln!(out, "no workers")?;
        return Ok(());
    }
    let mut table = Table::new(&[
        ">ID",
        "HOST",
        ">PID",
        "VERSION",
        "QUEUES",
        ">CONCURRENCY",
        ">RUNNING",
        "STARTED",
        "LAST SEEN",
        "ALIVE",
    ]);
    for worker in &workers {
        table.row(vec![
            worker.id.to_string(),
            worker.host.clone(),
            worker.pid.to_string(),
            worker.version.clone(),
            output::truncate(&worker.queues.join(","), 40),
            worker.concurrency.to_string(),
            worker.running.to_string(),
            output::time(Some(worker.started_at)),
            output::time(Some(worker.seen_at)),
            if worker.alive { "yes" } else { "no" }.to_owned(),
        ]);
    }
    table.print(out)?;
    Ok(())
}

async fn list(
    cli: &Cli,
    admin: &Admin,
    filter: &Filter,
    state: Option<JobState>,
    after: Option<i64>,
    limit: u32,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let page = admin
        .list(&filter.to_job_filter(state), after.map(JobId), limit)
        .await?;
    // Rows other SQL wrote that pq cannot read are said, on stderr, never a failure of the list.
    for (id, reason) in &page.unreadable {
        eprintln!("job {id} cannot be read: {reason}");
    }
    if cli.json {
        return output::json(out, &page);
    }
    if page.jobs.is_empty() {
        if page.unreadable.is_empty() {
            writeln!(out, "no jobs match")?;
        }
        if let Some(next) = page.next_after {
            eprintln!("more jobs follow: add --after {next} for the next page");
        }
        return Ok(());
    }
    let mut table = Table::new(&[
        ">ID",
        "QUEUE",
        "TASK",
        "STATE",
        ">ATTEMPTS",
        "ENQUEUED",
        "LAST ERROR",
    ]);
    for job in &page.jobs {
        table.row(vec![
            job.id.to_string(),
            job.queue.clone(),
            job.task.clone().unwrap_or_else(|| "-".to_owned()),
            job.state.to_string(),
            job.attempts.to_string(),
            output::time(Some(job.enqueued_at)),
            job.last_error
                .as_deref()
                .map_or_else(|| "-".to_owned(), |e| output::truncate(e, ERROR_WIDTH)),
        ]);
    }
    table.print(out)?;
    if let Some(next) = page.next_after {
        eprintln!("more jobs follow: add --after {next} for the next page");
    }
    Ok(())
}

async fn show(cli: &Cli, admin: &Admin, id: JobId, out: &mut Vec<u8>) -> anyhow::Result<()> {
    let Some(job) = admin.job(id).await? else {
        bail!("no job has id {id}");
    };
    let edges = admin.dependencies(id).await?;
    if cli.json {
        let mut shown = serde_json::to_value(&job)?;
        let (parents, children): (Vec<_>, Vec<_>) = edges.iter().partition(|e| e.child == id);
        shown["parents"] = serde_json::to_value(parents)?;
        shown["children"] = serde_json::to_value(children)?;
        return output::json(out, &shown);
    }
    let fields = [
        ("id", job.id.to_string()),
        ("queue", job.queue.clone()),
        ("task", job.task.clone().unwrap_or_else(|| "-".to_owned())),
        ("state", job.state.to_string()),
        ("attempts", job.attempts.to_string()),
        ("rescues", job.rescues.to_string()),
        ("snoozes", job.snoozes.to_string()),
        (
            "worker",
            job.worker.map_or_else(|| "-".to_owned(), |w| w.to_string()),
        ),
        ("enqueued at", output::time(Some(job.enqueued_at))),
        ("schedule at", output::time(job.schedule_at)),
        ("expected at", output::time(job.expected_at)),
        ("dequeued at", output::time(job.dequeued_at)),
        ("locked until", output::time(job.locked_until)),
        ("finished at", output::time(job.finished_at)),
        (
            "last error",
            job.last_error.clone().unwrap_or_else(|| "-".to_owned()),
        ),
    ];
    for (name, value) in fields {
        writeln!(out, "{:<13} {value}", format!("{name}:"))?;
    }
    if let Some(key) = &job.unique_key {
        writeln!(out, "{:<13} {key}", "unique key:")?;
    }
    if job.expires_at.is_some() {
        writeln!(
            out,
            "{:<13} {}",
            "expires at:",
            output::time(job.expires_at)
        )?;
    }
    // Each parent with how it ended, each child with whether this job's outcome reached it.
    let listed = |jobs: Vec<String>| {
        if jobs.is_empty() {
            "-".to_owned()
        } else {
            jobs.join(", ")
        }
    };
    if !edges.is_empty() {
        let parents = edges
            .iter()
            .filter(|edge| edge.child == id)
            .map(|edge| format!("{} ({})", edge.parent, outcome(edge)))
            .collect();
        let children = edges
            .iter()
            .filter(|edge| edge.parent == id)
            .map(|edge| edge.child.to_string())
            .collect();
        writeln!(out, "{:<13} {}", "parents:", listed(parents))?;
        writeln!(out, "{:<13} {}", "children:", listed(children))?;
        if let Some(workflow) = edges.iter().find_map(|edge| edge.workflow) {
            writeln!(out, "{:<13} {workflow}", "workflow:")?;
        }
    }
    let documents = [
        ("data", Some(&job.data)),
        ("meta", job.meta.as_ref()),
        ("result", job.result.as_ref()),
    ];
    for (name, document) in documents {
        let Some(document) = document else { continue };
        writeln!(out, "{name}:")?;
        for line in serde_json::to_string_pretty(document)?.lines() {
            writeln!(out, "  {line}")?;
        }
    }
    if !job.errors.is_empty() {
        writeln!(out, "errors:")?;
        for error in &job.errors {
            writeln!(
                out,
                "  attempt {} at {}: {}",
                error.attempt,
                output::time(Some(error.at)),
                error.error
            )?;
        }
    }
    Ok(())
}

/// How an edge's parent ended, as `jobs show` and `flows show` print it.
fn outcome(edge: &DependencyInfo) -> &'static str {
    edge.outcome.map_or("not ended", JobState::as_str)
}

/// A workflow's jobs, by id, each with its state and the parents it waits for.
async fn flow(cli: &Cli, admin: &Admin, id: WorkflowId, out: &mut Vec<u8>) -> anyhow::Result<()> {
    let Some(workflow) = admin.workflow(id).await? else {
        bail!("no workflow has id {id} (or it has no edges left)");
    };
    if cli.json {
        return output::json(out, &workflow);
    }
    let mut ids: Vec<JobId> = workflow
        .edges
        .iter()
        .flat_map(|edge| [edge.parent, edge.child])
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut table = Table::new(&[">ID", "TASK", "STATE", "AFTER", "LAST ERROR"]);
    for job in ids {
        let info = workflow.jobs.iter().find(|info| info.id == job);
        let after: Vec<String> = workflow
            .edges
            .iter()
            .filter(|edge| edge.child == job)
            .map(|edge| format!("{} ({})", edge.parent, outcome(edge)))
            .collect();
        table.row(vec![
            job.to_string(),
            info.and_then(|info| info.task.clone())
                .unwrap_or_else(|| "-".to_owned()),
            info.map_or_else(|| "gone".to_owned(), |info| info.state.to_string()),
            if after.is_empty() {
                "-".to_owned()
            } else {
                after.join(", ")
            },
            info.and_then(|info| info.last_error.as_deref())
                .map_or_else(|| "-".to_owned(), |e| output::truncate(e, ERROR_WIDTH)),
        ]);
    }
    table.print(out)?;
    Ok(())
}

/// An operation on jobs given by id.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Retry,
    Cancel,
    Delete,
}

impl Action {
    fn applies_to(self, state: JobState) -> bool {
        match self {
            Action::Retry => state == JobState::Failed,
            Action::Cancel => matches!(
                state,
                JobState::Ready | JobState::Scheduled | JobState::Running
            ),
            Action::Delete => state != JobState::Running,
        }
    }

    /// Why it does not apply to a job in another state.
    fn rule(self) -> &'static str {
        match self {
            Action::Retry => "only failed jobs can be retried",
            Action::Cancel => "only jobs that have not ended can be cancelled",
            Action::Delete => {
                "a running job cannot be deleted: let it finish, or its lease run out"
            }
        }
    }

    fn done(self) -> &'static str {
        match self {
            Action::Retry => "retried",
            Action::Cancel => "cancelled",
            Action::Delete => "deleted",
        }
    }

    async fn apply(self, admin: &Admin, id: JobId) -> pq_core::Result<bool> {
        match self {
            Action::Retry => admin.retry(id).await,
            Action::Cancel => admin.cancel(id).await,
            Action::Delete => admin.delete(id).await,
        }
    }
}

/// Applies `action` to every job of `ids`, or, if any of them is unknown or in a state it does
/// not apply to, to none of them.
async fn act(
    cli: &Cli,
    admin: &Admin,
    action: Action,
    ids: &[JobId],
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let mut running = Vec::new();
    for &id in ids {
        match admin.job(id).await? {
            None => problems.push(format!("no job has id {id}")),
            Some(JobInfo { state, .. }) if !action.applies_to(state) => {
                problems.push(format!("job {id} is {state}: {}", action.rule()));
            }
            Some(JobInfo {
                state: JobState::Running,
                ..
            }) => running.push(id),
            Some(_) => {}
        }
    }
    if !problems.is_empty() {
        bail!("{}; nothing was {}", problems.join("; "), action.done());
    }
    let mut applied = Vec::new();
    for &id in ids {
        // Checked just above; a worker may still have taken it since.
        if !action.apply(admin, id).await? {
            bail!(
                "job {id} changed state meanwhile and was not {}; {} before it were: {applied:?}",
                action.done(),
                action.done()
            );
        }
        applied.push(id);
    }
    if cli.json {
        return output::json(out, &json!({"count": applied.len(), "ids": applied}));
    }
    for id in applied {
        if action == Action::Cancel && running.contains(&id) {
            writeln!(
                out,
                "cancelling job {id}: its worker stops it at its next heartbeat"
            )?;
        } else {
            writeln!(out, "{} job {id}", action.done())?;
        }
    }
    Ok(())
}

async fn retry_all(
    cli: &Cli,
    admin: &Admin,
    filter: &Filter,
    batch_size: u32,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let filter = filter.to_job_filter(None);
    let total = in_batches("retried", "retrying", |after| {
        admin.retry_failed_batch(&filter, after, batch_size)
    })
    .await?;
    if cli.json {
        return output::json(out, &json!({"count": total}));
    }
    writeln!(out, "retried {total} failed jobs")?;
    Ok(())
}

async fn cancel_all(
    cli: &Cli,
    admin: &Admin,
    filter: &Filter,
    state: Option<JobState>,
    batch_size: u32,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    if let Some(state @ (JobState::Done | JobState::Failed | JobState::Cancelled)) = state {
        bail!("jobs that are {state} have ended: only ready, scheduled or running jobs can be cancelled");
    }
    let filter = filter.to_job_filter(state);
    let total = in_batches("cancelled", "cancelling", |after| {
        admin.cancel_batch(&filter, after, batch_size)
    })
    .await?;
    if cli.json {
        return output::json(out, &json!({"count": total}));
    }
    writeln!(
        out,
        "cancelled {total} jobs (running ones stop at their worker's next heartbeat)"
    )?;
    Ok(())
}

/// Runs `batch` from the start of the table, then from where each batch ended, until one finds
/// nothing, with a running count on stderr: how many jobs the batches moved. `done` and `doing`
/// say what they do ("cancelled", "cancelling").
async fn in_batches<F, Fut>(done: &'static str, doing: &str, mut batch: F) -> anyhow::Result<u64>
where
    F: FnMut(Option<JobId>) -> Fut,
    Fut: std::future::Future<Output = pq_core::Result<pq_core::Batch>>,
{
    let mut progress = Progress::new(done);
    let (mut total, mut after) = (0, None);
    loop {
        let step = batch(after)
            .await
            .with_context(|| format!("stopped after {doing} {total} jobs"))?;
        total += step.count;
        match step.last {
            Some(last) => after = Some(last),
            None => break,
        }
        progress.update(total);
    }
    progress.finish();
    Ok(total)
}

async fn prune(
    cli: &Cli,
    admin: &Admin,
    older_than: std::time::Duration,
    batch_size: u32,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let mut progress = Progress::new("pruned");
    let mut total = 0;
    loop {
        let count = admin
            .prune_batch(older_than, batch_size)
            .await
            .with_context(|| format!("stopped after pruning {total} jobs"))?;
        total += count;
        if count < u64::from(batch_size) {
            break;
        }
        progress.update(total);
    }
    progress.finish();
    if cli.json {
        return output::json(out, &json!({"count": total}));
    }
    writeln!(
        out,
        "pruned {total} jobs that finished more than {} ago",
        humantime::format_duration(older_than)
    )?;
    Ok(())
}

/// The arguments as a JSON object, or why they are not one.
fn json_object(args: &str) -> anyhow::Result<()> {
    let value: serde_json::Value = serde_json::from_str(args)
        .with_context(|| format!("the task's arguments {args:?} are not valid JSON"))?;
    if !value.is_object() {
        bail!(
            "the task's arguments must be a JSON object of its parameters, such as \
             '{{\"to\": \"a@example.com\"}}', not {args}"
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn enqueue(
    cli: &Cli,
    pq: &Pq,
    registry: &Registry,
    task: &str,
    args: &str,
    queue: Option<&str>,
    schedule_at: Option<pq_core::When>,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let mut default_queue = "default";
    let mut unique = None;
    let mut flow = None;
    // A program that registers tasks knows their names and argument types; the standalone
    // `pq` registers none and writes whatever it is given.
    if !registry.is_empty() {
        let Some(definition) = registry.get(task) else {
            let mut names: Vec<_> = registry.iter().map(|t| t.name).collect();
            names.sort_unstable();
            bail!(
                "no task is named `{task}` in this program; its tasks are: {}",
                names.join(", ")
            );
        };
        default_queue = definition.options.queue;
        if let Err(error) = (definition.check_arguments)(args) {
            bail!("{error}");
        }
        // A unique task's job is keyed as its calls key theirs.
        unique = definition
            .options
            .unique
            .and_then(|on_conflict| Some(((definition.unique_key)(args)?, on_conflict)));
        // So is one of a task with a flow policy.
        flow = (definition.flow_key)(args);
    }
    let queue = queue.unwrap_or(default_queue);
    let mut job = NewJob::from_json(queue, args.to_owned())?.task(task);
    if let Some(when) = schedule_at {
        job = job.schedule_at(when);
    }
    if let Some((key, on_conflict)) = unique {
        job = job.unique_key(key, on_conflict);
    }
    if let Some(key) = flow {
        job = job.flow_key(key);
    }
    let enqueued = pq.enqueue(job).await?;
    let id = enqueued.id();
    if !enqueued.is_duplicate() {
        pq_worker::metrics::job_enqueued(task.to_owned(), queue.to_owned());
    }
    let duplicate = enqueued.is_duplicate();
    if cli.json {
        return output::json(
            out,
            &json!({"id": id, "task": task, "queue": queue, "duplicate": duplicate}),
        );
    }
    if duplicate {
        writeln!(
            out,
            "job {id} of task {task} with the same unique key is waiting already"
        )?;
    } else {
        writeln!(out, "enqueued job {id}: task {task} on queue {queue}")?;
    }
    Ok(())
}
