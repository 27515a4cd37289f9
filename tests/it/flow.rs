//! Flow control: limits on how many jobs run at once, over every worker of the fleet (a
//! queue's, a task's, a key's); and a worker claims only the jobs of the tasks it registered,
//! so that old and new binaries share a queue during a rolling deploy.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use pq::{JobId, Pq, Registry, TaskContext, TaskDefinition, Worker};

use crate::support::{burst, record_run, runs_of, wait_until, Running, TestDb};

#[pq::task(queue = "deploy")]
async fn old_task(ctx: TaskContext) {
    record_run(&ctx);
}

#[pq::task(queue = "deploy")]
async fn new_task(ctx: TaskContext) {
    record_run(&ctx);
}

fn registry(definitions: &[TaskDefinition]) -> Registry {
    Registry::from_definitions(definitions.iter().copied()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_leaves_the_jobs_of_tasks_it_lacks_queued_for_a_worker_that_has_them() {
    let db = TestDb::new().await;
    let old = TaskDefinition::of::<old_task>("old");
    let new = TaskDefinition::of::<new_task>("new");
    let mut olds: Vec<JobId> = Vec::new();
    let mut news: Vec<JobId> = Vec::new();
    for _ in 0..20 {
        news.push(new_task().enqueue(&db.pq).await.unwrap());
        olds.push(old_task().enqueue(&db.pq).await.unwrap());
    }
    // An old binary, which lacks the new task, runs its own jobs and leaves the others.
    let old_binary = Running::start(Worker::new(db.pq.clone()).registry(registry(&[old])));
    let (pq, olds_) = (db.pq.clone(), olds.clone());
    wait_until(move || olds_.iter().all(|&id| runs_of(&pq, id) == 1)).await;
    for &id in &news {
        let job = db.pq.admin().job(id).await.unwrap().unwrap();
        assert_eq!((job.state, job.attempts), (pq::JobState::Ready, 0));
    }
    let unrunnable = db.pq.admin().unrunnable().await.unwrap();
    assert_eq!(unrunnable.len(), 1, "{unrunnable:?}");
    assert_eq!(unrunnable[0].queue, "deploy");
    assert_eq!(
        unrunnable[0].task.as_deref(),
        Some(<new_task as pq::Task>::NAME)
    );
    assert_eq!(unrunnable[0].jobs, 20);

    // A new binary beside it runs them; then nothing is left that no worker can run.
    burst(
        Worker::new(db.pq.clone()).registry(registry(&[old, new])),
        "deploy",
    )
    .await;
    for &id in &news {
        assert_eq!(runs_of(&db.pq, id), 1);
    }
    assert!(db.pq.admin().unrunnable().await.unwrap().is_empty());
    old_binary.stop().await.unwrap().unwrap();
}

/// How many jobs run at once, and the most at once, per (table, scope).
type Samples = Mutex<HashMap<(String, String), (u32, u32)>>;

fn sampler() -> &'static Samples {
    static RUNNING: OnceLock<Samples> = OnceLock::new();
    RUNNING.get_or_init(Mutex::default)
}

/// Counts a run of `scopes` for its whole length.
async fn sample(ctx: &TaskContext, scopes: &[String], length: Duration) {
    let table = ctx.pq().table();
    for scope in scopes {
        let mut running = sampler().lock().unwrap();
        let (now, most) = running.entry((table.clone(), scope.clone())).or_default();
        *now += 1;
        *most = (*most).max(*now);
    }
    tokio::time::sleep(length).await;
    for scope in scopes {
        let mut running = sampler().lock().unwrap();
        running.get_mut(&(table.clone(), scope.clone())).unwrap().0 -= 1;
    }
}

/// The most jobs of `scope` that ran at once in `pq`'s table.
fn most(pq: &Pq, scope: &str) -> u32 {
    sampler()
        .lock()
        .unwrap()
        .get(&(pq.table(), scope.to_owned()))
        .map_or(0, |(_, most)| *most)
}

#[pq::task(queue = "capped")]
async fn capped(ctx: TaskContext) {
    sample(&ctx, &["queue".into()], Duration::from_millis(20)).await;
}

#[pq::task(queue = "sms", limit_key = [customer], limit = 1)]
async fn send_sms(ctx: TaskContext, customer: u32) {
    sample(
        &ctx,
        &["all".into(), format!("customer {customer}")],
        Duration::from_millis(10),
    )
    .await;
}

#[pq::task(queue = "reports", limit = 3)]
async fn report(ctx: TaskContext) {
    sample(&ctx, &["task".into()], Duration::from_millis(20)).await;
}

/// Several workers, each its own member of the fleet, on `queue`, until `done`.
async fn fleet(pq: &Pq, queue: &str, workers: usize, concurrency: usize) -> Vec<Running> {
    let mut fleet = Vec::new();
    for _ in 0..workers {
        let handle = crate::support::builder()
            .schema(&schema_of(pq))
            .connect(&crate::support::handle_url())
            .await
            .unwrap();
        fleet.push(Running::start(
            Worker::new(handle).queues([queue]).concurrency(concurrency),
        ));
    }
    fleet
}

fn schema_of(pq: &Pq) -> String {
    let table = pq.table();
    table[1..table.find("\".").unwrap()].to_owned()
}

async fn drained(pq: &Pq, queue: &str, fleet: Vec<Running>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stats = pq.admin().stats().await.unwrap();
        let left = stats
            .iter()
            .filter(|s| s.queue == queue)
            .map(|s| s.ready + s.scheduled + s.running)
            .sum::<u64>();
        if left == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for worker in fleet {
        worker.stop().await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_limit_holds_over_every_worker_and_changes_at_run_time() {
    let db = TestDb::new().await;
    db.pq
        .queue("capped")
        .limits()
        .max_running(3)
        .apply()
        .await
        .unwrap();
    let calls: pq::TaskBatch = (0..120).map(|_| capped()).collect();
    calls.enqueue(&db.pq).await.unwrap();
    let fleet = fleet(&db.pq, "capped", 3, 8).await;
    // Raised while they run: more at once from then on, never more than the limit.
    let pq = db.pq.clone();
    wait_until(move || most(&pq, "queue") == 3).await;
    db.pq
        .queue("capped")
        .limits()
        .max_running(6)
        .apply()
        .await
        .unwrap();
    drained(&db.pq, "capped", fleet).await;
    assert_eq!(
        most(&db.pq, "queue"),
        6,
        "the raised limit was reached, not passed"
    );
    let limits = db.pq.admin().limits().await.unwrap();
    let queues: Vec<_> = limits.iter().filter(|l| l.kind == "queue").collect();
    assert_eq!(queues.len(), 1, "{limits:?}");
    assert_eq!(
        (queues[0].name.as_str(), queues[0].max_running),
        ("capped", Some(6))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_key_limit_runs_one_job_of_a_key_at_a_time_and_many_keys_at_once() {
    let db = TestDb::new().await;
    let calls: pq::TaskBatch = (0..200).map(|n| send_sms(n % 10)).collect();
    calls.enqueue(&db.pq).await.unwrap();
    let fleet = fleet(&db.pq, "sms", 3, 8).await;
    drained(&db.pq, "sms", fleet).await;
    for customer in 0..10 {
        assert_eq!(most(&db.pq, &format!("customer {customer}")), 1);
    }
    assert!(
        most(&db.pq, "all") >= 3,
        "keys ran side by side: {}",
        most(&db.pq, "all")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_limit_holds_over_every_worker() {
    let db = TestDb::new().await;
    let calls: pq::TaskBatch = (0..60).map(|_| report()).collect();
    calls.enqueue(&db.pq).await.unwrap();
    let fleet = fleet(&db.pq, "reports", 3, 8).await;
    drained(&db.pq, "reports", fleet).await;
    assert_eq!(most(&db.pq, "task"), 3);
}

/// The entries of each account in the order they succeeded, per table.
type Ledgers = Mutex<HashMap<(String, u32), Vec<u32>>>;

fn ledgers() -> &'static Ledgers {
    static LEDGERS: OnceLock<Ledgers> = OnceLock::new();
    LEDGERS.get_or_init(Mutex::default)
}

/// Fails the first run of about a third of the entries, at random.
#[pq::task(queue = "ledger", sequence = [account], max_retries = 5, retry_in = "20ms")]
async fn ledger_entry(ctx: TaskContext, account: u32, n: u32) -> Result<(), String> {
    sample(
        &ctx,
        &[format!("account {account}")],
        Duration::from_millis(2),
    )
    .await;
    if ctx.attempt() == 1 && rand_fails(account, n) {
        return Err(format!("entry {n} of account {account} failed"));
    }
    let mut ledgers = ledgers().lock().unwrap();
    ledgers
        .entry((ctx.pq().table(), account))
        .or_default()
        .push(n);
    Ok(())
}

fn rand_fails(account: u32, n: u32) -> bool {
    (account.wrapping_mul(2_654_435_761) ^ n.wrapping_mul(40_503)).is_multiple_of(3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_runs_each_keys_jobs_one_at_a_time_in_order_through_failures() {
    let db = TestDb::new().await;
    let calls: pq::TaskBatch = (0..30)
        .flat_map(|n| (0..6).map(move |account| ledger_entry(account, n)))
        .collect();
    calls.enqueue(&db.pq).await.unwrap();
    let fleet = fleet(&db.pq, "ledger", 4, 4).await;
    drained(&db.pq, "ledger", fleet).await;
    let ledgers = ledgers().lock().unwrap();
    for account in 0..6 {
        assert_eq!(most(&db.pq, &format!("account {account}")), 1);
        let entries = &ledgers[&(db.pq.table(), account)];
        assert_eq!(*entries, (0..30).collect::<Vec<_>>(), "account {account}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_sequence_waits_for_its_head_scheduled_later() {
    let db = TestDb::new().await;
    ledger_entry(7, 0)
        .schedule_at(Duration::from_millis(1500))
        .enqueue(&db.pq)
        .await
        .unwrap();
    ledger_entry(7, 1).enqueue(&db.pq).await.unwrap();
    let fleet = fleet(&db.pq, "ledger", 1, 4).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let ran = ledgers().lock().unwrap().get(&(db.pq.table(), 7)).cloned();
    assert_eq!(ran, None, "the second entry waits for the first");
    drained(&db.pq, "ledger", fleet).await;
    assert_eq!(ledgers().lock().unwrap()[&(db.pq.table(), 7)], [0, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_key_past_a_thousand_bytes_is_kept_as_its_digest() {
    let db = TestDb::new().await;
    let long = |end: &str| format!("{}{end}", "k".repeat(3000));
    for key in [long("a"), long("a"), long("b")] {
        send_sms(1).flow_key(key).enqueue(&db.pq).await.unwrap();
    }
    let flows: Vec<String> =
        sqlx::query_scalar(&format!("SELECT flow FROM {} ORDER BY id", db.pq.table()))
            .fetch_all(&mut crate::support::direct().await)
            .await
            .unwrap();
    let digests = flows
        .iter()
        .filter(|f| f.starts_with("md5:") && f.len() == 36);
    assert_eq!(
        digests.count(),
        3,
        "lengths {:?}",
        flows.iter().map(String::len).collect::<Vec<_>>()
    );
    assert_eq!(flows[0], flows[1]);
    assert_ne!(flows[1], flows[2]);
    let fleet = fleet(&db.pq, "sms", 1, 4).await;
    drained(&db.pq, "sms", fleet).await;
}

#[pq::task(queue = "metered")]
async fn metered(ctx: TaskContext) {
    let mut starts = starts().lock().unwrap();
    starts
        .entry(ctx.pq().table())
        .or_default()
        .push(std::time::Instant::now());
}

fn starts() -> &'static Mutex<HashMap<String, Vec<std::time::Instant>>> {
    static STARTS: OnceLock<Mutex<HashMap<String, Vec<std::time::Instant>>>> = OnceLock::new();
    STARTS.get_or_init(Mutex::default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_never_lets_more_start_than_rate_times_period_plus_burst() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("metered");
    queue.limits().rate("20/s").burst(4).apply().await.unwrap();
    let calls: pq::TaskBatch = (0..200).map(|_| metered()).collect();
    calls.enqueue(&db.pq).await.unwrap();
    let fleet = fleet(&db.pq, "metered", 2, 8).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for worker in fleet {
        worker.stop().await.unwrap().unwrap();
    }
    let starts = starts().lock().unwrap()[&db.pq.table()].clone();
    // In any window of a second, at most 20 + 4 started. The database's clock decides, and the
    // workers record their own a few milliseconds later: the window is narrowed by 50 ms.
    for (n, first) in starts.iter().enumerate() {
        let within = starts[n..]
            .iter()
            .filter(|t| t.duration_since(*first) < Duration::from_millis(950))
            .count();
        assert!(within <= 24, "{within} started within a second");
    }
    // And the rate is held, not starved: measured closely by pq-bench, loosely here.
    assert!(
        starts.len() >= 40,
        "{} started in 3 s at 20/s",
        starts.len()
    );
}

#[pq::task(queue = "metered_keys", limit_key = [customer], rate = "10/s", burst = 2)]
async fn metered_by_customer(ctx: TaskContext, customer: u32) {
    let mut starts = starts().lock().unwrap();
    starts
        .entry(format!("{} customer {customer}", ctx.pq().table()))
        .or_default()
        .push(std::time::Instant::now());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_with_a_limit_key_holds_for_each_key_and_keys_start_side_by_side() {
    let db = TestDb::new().await;
    let calls: pq::TaskBatch = (0..120).map(|n| metered_by_customer(n % 3)).collect();
    calls.enqueue(&db.pq).await.unwrap();
    let fleet = fleet(&db.pq, "metered_keys", 2, 8).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for worker in fleet {
        worker.stop().await.unwrap().unwrap();
    }
    let mut total = 0;
    for customer in 0..3 {
        let starts =
            starts().lock().unwrap()[&format!("{} customer {customer}", db.pq.table())].clone();
        for (n, first) in starts.iter().enumerate() {
            let within = starts[n..]
                .iter()
                .filter(|t| t.duration_since(*first) < Duration::from_millis(950))
                .count();
            assert!(
                within <= 12,
                "customer {customer}: {within} started within a second"
            );
        }
        total += starts.len();
    }
    // Three keys at 10/s each: far more than one rate of 10/s for the task would let start.
    assert!(
        total >= 60,
        "{total} started in 3 s at 10/s for each of 3 keys"
    );
}

#[tokio::test]
async fn bad_limits_are_refused_at_apply_with_the_reason() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("q");
    let refused = [
        (queue.limits().max_running(0), "at least one"),
        (queue.limits().rate("0/s"), "at least one job"),
        (queue.limits().rate("-5/s"), "whole number"),
        (queue.limits().rate("5000000/s"), "1,000,000"),
        (queue.limits().rate("1/2d"), "at most a day"),
        (queue.limits().rate("fast"), "jobs/period"),
        (queue.limits().rate("10/s").burst(0), "at least one"),
        (queue.limits().burst(5), "goes with a rate"),
    ];
    for (limits, reason) in refused {
        let error = limits.apply().await.unwrap_err();
        assert!(
            matches!(error, pq::Error::InvalidLimit { .. }) && error.to_string().contains(reason),
            "{error}"
        );
    }
    assert!(db
        .pq
        .admin()
        .limits()
        .await
        .unwrap()
        .iter()
        .all(|l| l.kind != "queue"));
}

#[pq::task(queue = "paced")]
async fn paced(ctx: TaskContext) {
    record_run(&ctx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_worker_waits_for_the_jobs_a_limit_holds_back() {
    let db = TestDb::new().await;
    db.pq
        .queue("paced")
        .limits()
        .rate("50/s")
        .burst(5)
        .apply()
        .await
        .unwrap();
    let calls: pq::TaskBatch = (0..30).map(|_| paced()).collect();
    let ids: Vec<JobId> = calls
        .enqueue(&db.pq)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id())
        .collect();
    let started = std::time::Instant::now();
    burst(Worker::new(db.pq.clone()), "paced").await;
    for id in ids {
        assert_eq!(runs_of(&db.pq, id), 1);
    }
    // 5 at once, then 50 a second: the rest take half a second at least.
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[pq::task(queue = "slow_lane")]
async fn slow_lane(ctx: TaskContext) {
    record_run(&ctx);
}

#[pq::task(queue = "fast_lane")]
async fn fast_lane(ctx: TaskContext) {
    record_run(&ctx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_queue_does_not_hold_back_the_workers_other_queues() {
    let db = TestDb::new().await;
    db.pq
        .queue("slow_lane")
        .limits()
        .rate("1/h")
        .burst(1)
        .apply()
        .await
        .unwrap();
    let slow: pq::TaskBatch = (0..50).map(|_| slow_lane()).collect();
    slow.enqueue(&db.pq).await.unwrap();
    let fast: pq::TaskBatch = (0..200).map(|_| fast_lane()).collect();
    let fast: Vec<JobId> = fast
        .enqueue(&db.pq)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id())
        .collect();
    let worker = Running::start(
        Worker::new(db.pq.clone())
            .queues(["slow_lane", "fast_lane"])
            .concurrency(1),
    );
    let pq = db.pq.clone();
    wait_until(move || fast.iter().all(|&id| runs_of(&pq, id) == 1)).await;
    worker.stop().await.unwrap().unwrap();
    let left = db.pq.queue("slow_lane").len().await.unwrap();
    assert_eq!(left, 49, "one slow job an hour");
}

/// Fails the first run of entry 1 of each account.
#[pq::task(queue = "skipping", sequence = [account], on_failure = "skip", max_retries = 1, retry_in = "2s")]
async fn skipping_entry(ctx: TaskContext, account: u32, n: u32) -> Result<(), String> {
    if n == 1 && ctx.attempt() == 1 {
        return Err("entry 1 fails once".into());
    }
    let mut ledgers = ledgers().lock().unwrap();
    ledgers
        .entry((ctx.pq().table(), account))
        .or_default()
        .push(n);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipping_sequence_goes_on_past_a_failed_job_which_runs_at_its_retry() {
    let db = TestDb::new().await;
    let calls: pq::TaskBatch = (0..4).map(|n| skipping_entry(7, n)).collect();
    calls.enqueue(&db.pq).await.unwrap();
    let fleet = fleet(&db.pq, "skipping", 2, 4).await;
    drained(&db.pq, "skipping", fleet).await;
    let ledgers = ledgers().lock().unwrap();
    // Entry 1 failed; 2 and 3 went on meanwhile, and 1 ran at its retry, 2 s later.
    assert_eq!(ledgers[&(db.pq.table(), 7)], [0, 2, 3, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_at_once_from_many_workers_never_take_more_than_the_limit_together() {
    let db = TestDb::new().await;
    db.pq
        .queue("contended")
        .limits()
        .max_running(5)
        .apply()
        .await
        .unwrap();
    // Workers of different programs, each running tasks of its own: their claims choose
    // different jobs, and only the limit's lock keeps them from taking 5 each.
    let tasks: Vec<String> = (0..8).map(|n| format!("task {n}")).collect();
    let jobs: Vec<pq::NewJob> = (0..80)
        .map(|n| {
            pq::NewJob::from_json("contended", "{}".into())
                .unwrap()
                .task(&tasks[n % 8])
        })
        .collect();
    pq::Enqueue::enqueue_many(&db.pq, jobs).await.unwrap();
    let mut claimers = Vec::new();
    for task in &tasks {
        let task = [task.as_str()];
        let claimer = crate::support::Claimer::with_tasks(&db.pq, &["contended"], Some(&task));
        claimers.push(claimer.await);
    }
    // Connections open first, so that the claims start together.
    let open = futures_util::future::join_all((0..8).map(|_| db.pq.pool().acquire())).await;
    drop(open);
    for round in 0..5 {
        let claims = claimers.iter_mut().map(|claimer| claimer.claim(5));
        let taken: usize = futures_util::future::join_all(claims)
            .await
            .iter()
            .map(Vec::len)
            .sum();
        let expected = if round == 0 { 5 } else { 0 };
        assert_eq!(taken, expected, "round {round}: 8 claims at once");
    }
    let running = db.pq.admin().stats().await.unwrap()[0].running;
    assert_eq!(running, 5);
}
