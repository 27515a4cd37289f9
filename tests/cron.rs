//! Recurring jobs against a real PostgreSQL: several workers defining one schedule write one job
//! per fire time; missed fire times follow the declared policy; a `cron` task's run knows its
//! fire time; operators list, pause, resume and trigger schedules. A test binary of its own: its
//! `cron` task would otherwise be declared by every worker of the other tests.

#![allow(dead_code)]

#[path = "it/support.rs"]
mod support;

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use pq::{OnMissed, Schedule, TaskContext, Worker};
use serde_json::Value;

use support::{derived, eventually, Running, TestDb};

#[pq::task(queue = "cron")]
async fn tick(label: String) {
    let _ = label;
}

/// What a run of `yearly` saw: its table, its `scheduled_at` and its `fires`.
type Seen = (String, Option<DateTime<Utc>>, u64);

static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

#[pq::task(queue = "cron_yearly", cron = "0 0 1 1 *", timezone = "Europe/Berlin")]
async fn yearly(ctx: TaskContext) {
    let seen = (ctx.pq().table(), ctx.scheduled_at(), ctx.fires());
    SEEN.lock().unwrap().push(seen);
}

fn seen_in(table: &str) -> Vec<(Option<DateTime<Utc>>, u64)> {
    let seen = SEEN.lock().unwrap();
    seen.iter()
        .filter(|(t, _, _)| t == table)
        .map(|(_, at, fires)| (*at, *fires))
        .collect()
}

/// The jobs of `task`: each one's fire time and how many fires it stands for, by fire time.
async fn fired(db: &TestDb, task: &str) -> Vec<(DateTime<Utc>, u64)> {
    let rows: Vec<(Value,)> = sqlx::query_as(&format!(
        "SELECT meta->'cron' FROM {} WHERE task = $1",
        db.pq.table()
    ))
    .bind(task)
    .fetch_all(db.pool())
    .await
    .expect("read the jobs");
    let mut fired: Vec<_> = rows
        .into_iter()
        .map(|(cron,)| {
            let at = DateTime::parse_from_rfc3339(cron["fire"].as_str().expect("a fire time"))
                .expect("RFC 3339")
                .with_timezone(&Utc);
            (at, cron["fires"].as_u64().expect("a count"))
        })
        .collect();
    fired.sort();
    fired
}

fn name<T: pq::Task>() -> &'static str {
    T::NAME
}

/// A worker that works no queue of these tests' jobs, and only fires the schedules it is given
/// (with no task registered, not `yearly`'s).
fn scheduler(pq: pq::Pq) -> Worker {
    Worker::new(pq)
        .registry(pq::Registry::default())
        .queues(["nothing"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_workers_defining_one_schedule_write_one_job_per_fire_time_and_miss_none() {
    let db = TestDb::new().await;
    let mut workers = Vec::new();
    for _ in 0..4 {
        let pq = db.another_handle().await;
        // Caught up, not coalesced: a worker late by over a second on a loaded machine still
        // writes a job for each second.
        let every_second = Schedule::new("* * * * * *")
            .unwrap()
            .on_missed(OnMissed::CatchUp);
        let worker = scheduler(pq)
            .schedule(every_second, tick("every second".into()))
            .expect("a valid schedule");
        workers.push(Running::start(worker));
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    for worker in workers {
        worker.stop().await.unwrap().unwrap();
    }

    let fired = fired(&db, name::<tick>()).await;
    assert!(fired.len() >= 5, "{fired:?}");
    for pair in fired.windows(2) {
        assert_eq!(
            pair[1].0 - pair[0].0,
            chrono::Duration::seconds(1),
            "one job per second, none twice, none missing: {fired:?}"
        );
    }
    assert!(fired.iter().all(|(_, fires)| *fires == 1), "{fired:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_times_missed_while_no_worker_ran_follow_each_schedules_policy() {
    let db = TestDb::new().await;
    let new_year = "0 0 1 1 *";
    let worker = || {
        let schedule = |policy: OnMissed| {
            Schedule::new(new_year)
                .unwrap()
                .on_missed(policy)
                .named(policy.as_str())
        };
        scheduler(db.pq.clone())
            .schedule(schedule(OnMissed::Coalesce), tick("coalesce".into()))
            .unwrap()
            .schedule(schedule(OnMissed::CatchUp), tick("catch_up".into()))
            .unwrap()
            .schedule(schedule(OnMissed::Skip), tick("skip".into()))
            .unwrap()
    };
    let schedules = derived(&db.pq, "schedules");
    // Declared, then every worker gone since 2020.
    let running = Running::start(worker());
    eventually(|| async { db.pq.admin().schedules().await.is_ok_and(|s| s.len() == 3) }).await;
    running.stop().await.unwrap().unwrap();
    sqlx::query(&format!(
        "UPDATE {schedules} SET next_at = '2020-01-01 00:00:00+00'"
    ))
    .execute(db.pool())
    .await
    .unwrap();

    let running = Running::start(worker());
    eventually(|| async {
        let schedules = db.pq.admin().schedules().await.unwrap();
        schedules.iter().all(|s| s.next_at > Utc::now())
    })
    .await;
    running.stop().await.unwrap().unwrap();

    let this_year = Utc::now().year();
    let missed = u64::try_from(this_year - 2020 + 1).unwrap();
    let latest: DateTime<Utc> = format!("{this_year}-01-01T00:00:00Z").parse().unwrap();
    let by_label = |label: &'static str| {
        let pool = db.pool().clone();
        let table = db.pq.table();
        async move {
            let rows: Vec<(Value,)> = sqlx::query_as(&format!(
                "SELECT meta->'cron' FROM {table} WHERE data->>'label' = $1 ORDER BY id"
            ))
            .bind(label)
            .fetch_all(&pool)
            .await
            .unwrap();
            rows.into_iter()
                .map(|(cron,)| {
                    (
                        cron["fire"]
                            .as_str()
                            .unwrap()
                            .parse::<DateTime<Utc>>()
                            .unwrap(),
                        cron["fires"].as_u64().unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(by_label("coalesce").await, [(latest, missed)]);
    let caught_up = by_label("catch_up").await;
    assert_eq!(caught_up.len() as u64, missed);
    assert_eq!(caught_up.first().unwrap().0.year(), 2020);
    assert_eq!(caught_up.last().unwrap().0, latest);
    assert_eq!(by_label("skip").await, []);
    let next: DateTime<Utc> = format!("{}-01-01T00:00:00Z", this_year + 1)
        .parse()
        .unwrap();
    for schedule in db.pq.admin().schedules().await.unwrap() {
        assert_eq!(schedule.next_at, next, "{schedule:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_task_is_declared_by_its_workers_and_operators_list_pause_trigger_and_see_it_orphaned(
) {
    let db = TestDb::new().await;
    let admin = db.pq.admin();
    let running = Running::start(Worker::new(db.pq.clone()).queues(["cron_yearly"]));
    eventually(|| async { admin.schedules().await.is_ok_and(|s| s.len() == 1) }).await;

    let [schedule] = &admin.schedules().await.unwrap()[..] else {
        panic!("one schedule")
    };
    assert_eq!(schedule.name, name::<yearly>());
    assert_eq!(
        (schedule.expression.as_str(), schedule.timezone.as_str()),
        ("0 0 1 1 *", "Europe/Berlin")
    );
    assert_eq!(schedule.on_missed, "coalesce");
    // Midnight in Berlin is 23:00 UTC the day before.
    let new_year = |year: i32| {
        format!("{year}-12-31T23:00:00Z")
            .parse::<DateTime<Utc>>()
            .unwrap()
    };
    let this_year = new_year(Utc::now().year());
    let next = if this_year > Utc::now() {
        this_year
    } else {
        new_year(Utc::now().year() + 1)
    };
    assert_eq!(schedule.next_at, next);
    assert!(!schedule.orphaned && schedule.paused_at.is_none());

    // Triggered: a run now, told so.
    let job = admin
        .trigger_schedule(&schedule.name)
        .await
        .unwrap()
        .unwrap();
    eventually(|| async { !seen_in(&db.pq.table()).is_empty() }).await;
    let [(at, fires)] = &seen_in(&db.pq.table())[..] else {
        panic!("one run")
    };
    assert!((Utc::now() - at.unwrap()).num_seconds() < 30, "{at:?}");
    assert_eq!(*fires, 1);
    assert!(
        db.pq.admin().job(job).await.unwrap().is_none(),
        "ran and gone"
    );
    assert_eq!(admin.trigger_schedule("no such").await.unwrap(), None);

    assert_eq!(
        admin.pause_schedule(&schedule.name).await.unwrap(),
        Some(true)
    );
    assert_eq!(
        admin.pause_schedule(&schedule.name).await.unwrap(),
        Some(false)
    );
    assert!(admin.schedules().await.unwrap()[0].paused_at.is_some());
    assert_eq!(
        admin.resume_schedule(&schedule.name).await.unwrap(),
        Some(true)
    );
    assert_eq!(admin.resume_schedule("no such").await.unwrap(), None);
    running.stop().await.unwrap().unwrap();

    // No worker has declared it for long: orphaned, and kept until deleted.
    sqlx::query(&format!(
        "UPDATE {} SET seen_at = now() - interval '1 hour'",
        derived(&db.pq, "schedules")
    ))
    .execute(db.pool())
    .await
    .unwrap();
    assert!(admin.schedules().await.unwrap()[0].orphaned);
    assert!(admin.delete_schedule(&schedule.name).await.unwrap());
    assert!(admin.schedules().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_schedule_writes_no_job_until_it_resumes() {
    let db = TestDb::new().await;
    let every_second = Schedule::new("* * * * * *")
        .unwrap()
        .on_missed(OnMissed::Skip)
        .named("ticking");
    let worker = scheduler(db.pq.clone())
        .schedule(every_second, tick("paused".into()))
        .unwrap();
    let running = Running::start(worker);
    let admin = db.pq.admin();
    eventually(|| async { fired(&db, name::<tick>()).await.len() >= 2 }).await;

    assert_eq!(admin.pause_schedule("ticking").await.unwrap(), Some(true));
    let paused = fired(&db, name::<tick>()).await.len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fired(&db, name::<tick>()).await.len(),
        paused,
        "no job while paused"
    );

    assert_eq!(admin.resume_schedule("ticking").await.unwrap(), Some(true));
    eventually(|| async { fired(&db, name::<tick>()).await.len() > paused }).await;
    running.stop().await.unwrap().unwrap();
    // Skipped: the seconds it was paused got no job.
    let fired = fired(&db, name::<tick>()).await;
    let gap = fired.windows(2).map(|pair| pair[1].0 - pair[0].0).max();
    assert!(gap >= Some(chrono::Duration::seconds(3)), "{fired:?}");
}

#[tokio::test]
async fn a_periodic_call_with_a_bad_expression_or_zone_is_an_error_not_a_panic() {
    let pq = pq::Pq::builder()
        .connect_lazy("postgres://postgres@127.0.0.1/test")
        .unwrap();
    let error = Worker::new(pq)
        .periodic("every day", tick("x".into()))
        .err();
    assert!(
        error.is_some_and(|e| e.to_string().contains("invalid cron expression")),
        "an error"
    );
    assert!(Schedule::new("@daily")
        .unwrap()
        .timezone("Nowhere/Else")
        .is_err());
}

#[pq::task(queue = "cron_keyed", sequence = [account])]
async fn settle(account: u32) {
    let _ = account;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_periodic_jobs_flow_key_is_its_calls() {
    let db = TestDb::new().await;
    let every_second = Schedule::new("* * * * * *").unwrap();
    let worker = scheduler(db.pq.clone())
        .schedule(every_second, settle(7))
        .unwrap();
    let running = Running::start(worker);
    eventually(|| async { !fired(&db, name::<settle>()).await.is_empty() }).await;
    running.stop().await.unwrap().unwrap();
    settle(7).enqueue(&db.pq).await.unwrap();

    let flows: Vec<Option<String>> = sqlx::query_scalar(&format!(
        "SELECT DISTINCT flow FROM {} WHERE task = $1",
        db.pq.table()
    ))
    .bind(name::<settle>())
    .fetch_all(db.pool())
    .await
    .unwrap();
    assert_eq!(
        flows.len(),
        1,
        "one key for the fired jobs and the call: {flows:?}"
    );
    assert!(flows[0].is_some());
}
