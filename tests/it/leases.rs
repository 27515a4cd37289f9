//! A healthy worker keeps its jobs: its bookkeeping never waits behind its handlers, its
//! liveness is its own heartbeat and not a write to each job's row, and a lost connection costs
//! it nothing.

use std::time::Duration;

use pq::{Pq, TaskContext, Worker};

use crate::proxy::Proxy;
use crate::support::{
    database_url, direct, eventually, record_run, runs_of, Claimer, Running, TestDb,
};

/// Another process on the same table, with a worker on `queue` that rescues whatever it finds
/// lost and runs it, until stopped.
async fn rival(db: &TestDb, queue: &str, lease: Duration) -> Running {
    Running::start(
        Worker::new(db.another_handle().await)
            .queues([queue])
            .lease(lease),
    )
}

/// Holds its transaction open for `millis`, then writes its effect in it.
#[pq::task(queue = "held", retry_in = "0s")]
async fn hold_transaction(ctx: TaskContext, millis: u64, effects: String) -> anyhow::Result<()> {
    record_run(&ctx);
    let mut tx = ctx.transaction().await?;
    sqlx::query("SELECT 1")
        .persistent(false)
        .execute(&mut *tx)
        .await?;
    tokio::time::sleep(Duration::from_millis(millis)).await;
    sqlx::query(&format!("INSERT INTO {effects} (job) VALUES ($1)"))
        .persistent(false)
        .bind(ctx.job_id().0)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The same in REPEATABLE READ: its snapshot is taken before it waits, so a write to its job's
/// row meanwhile would make its completion a serialization failure.
#[pq::task(queue = "held", retry_in = "0s")]
async fn hold_repeatable_read(
    ctx: TaskContext,
    millis: u64,
    effects: String,
) -> anyhow::Result<()> {
    record_run(&ctx);
    let mut tx = ctx.transaction().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .persistent(false)
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT 1")
        .persistent(false)
        .execute(&mut *tx)
        .await?;
    tokio::time::sleep(Duration::from_millis(millis)).await;
    sqlx::query(&format!("INSERT INTO {effects} (job) VALUES ($1)"))
        .persistent(false)
        .bind(ctx.job_id().0)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Sleeps for `millis`, outside any transaction.
#[pq::task(queue = "held", retry_in = "0s")]
async fn nap(ctx: TaskContext, millis: u64) {
    record_run(&ctx);
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

async fn effects_table(db: &TestDb) -> String {
    let effects = format!("\"{}\".effects", db.schema);
    sqlx::raw_sql(&format!("CREATE TABLE {effects} (job bigint)"))
        .execute(db.pool())
        .await
        .unwrap();
    effects
}

async fn effects_of(db: &TestDb, effects: &str) -> Vec<i64> {
    let mut jobs: Vec<i64> = sqlx::query_scalar(&format!("SELECT job FROM {effects}"))
        .fetch_all(db.pool())
        .await
        .unwrap();
    jobs.sort_unstable();
    jobs
}

async fn left_in(pq: &Pq) -> Vec<(i64, String, Option<String>)> {
    sqlx::query_as(&format!(
        "SELECT id, state, last_error FROM {} ORDER BY id",
        pq.table()
    ))
    .fetch_all(&mut direct().await)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_handlers_at_the_default_concurrency_do_not_starve_on_the_default_pool() {
    let db = TestDb::new().await;
    let effects = effects_table(&db).await;
    // The defaults: a pool of 10 connections, a worker running 16 jobs at once. Each job
    // holds a transaction for longer than the pool's acquire timeout (5 s).
    let pq = db.another_handle().await;
    let mut ids = Vec::new();
    for _ in 0..16 {
        let call = hold_transaction(6000, effects.clone());
        ids.push(call.enqueue(&pq).await.unwrap().0);
    }
    tokio::time::timeout(
        Duration::from_secs(60),
        Worker::new(pq.clone()).queues(["held"]).burst().run(),
    )
    .await
    .expect("the worker drains the queue")
    .unwrap();
    assert_eq!(left_in(&pq).await, [], "every job succeeded");
    ids.sort_unstable();
    assert_eq!(effects_of(&db, &effects).await, ids, "each wrote once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_worker_on_a_small_pool_keeps_its_leases_while_its_handlers_hold_it() {
    let db = TestDb::new().await;
    let effects = effects_table(&db).await;
    // A pool of 2, both connections held by the 2 running handlers, and a short lease: the
    // worker's heartbeat must not need either of them.
    let pq = Pq::builder()
        .schema(&db.schema)
        .max_connections(2)
        .connect(&database_url())
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let call = hold_transaction(5000, effects.clone());
        ids.push(call.enqueue(&pq).await.unwrap());
    }
    let lease = Duration::from_secs(2);
    let first = tokio::spawn(
        Worker::new(pq.clone())
            .queues(["held"])
            .concurrency(2)
            .lease(lease)
            .burst()
            .run(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rival = rival(&db, "held", lease).await;
    first.await.unwrap().unwrap();
    rival.stop().await.unwrap().unwrap();
    for id in &ids {
        assert_eq!(
            runs_of(&pq, *id),
            1,
            "job {id} ran once, by its first worker"
        );
    }
    assert_eq!(left_in(&pq).await, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeatable_read_handler_longer_than_a_lease_completes() {
    let db = TestDb::new().await;
    let effects = effects_table(&db).await;
    let id = hold_repeatable_read(3000, effects.clone())
        .enqueue(&db.pq)
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(60),
        Worker::new(db.pq.clone())
            .queues(["held"])
            .lease(Duration::from_secs(1))
            .burst()
            .run(),
    )
    .await
    .expect("drains")
    .unwrap();
    assert_eq!(runs_of(&db.pq, id), 1, "completed on its first run");
    assert_eq!(effects_of(&db, &effects).await, [id.0]);
    assert_eq!(left_in(&db.pq).await, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_jobs_row_does_not_change_while_it_runs() {
    let db = TestDb::new().await;
    let id = nap(4000).enqueue(&db.pq).await.unwrap();
    let worker = tokio::spawn(
        Worker::new(db.pq.clone())
            .queues(["held"])
            .lease(Duration::from_secs(1))
            .burst()
            .run(),
    );
    crate::support::wait_until(|| runs_of(&db.pq, id) == 1).await;
    let version = |pq: Pq| async move {
        let row: (String, String) = sqlx::query_as(&format!(
            "SELECT ctid::text, xmin::text FROM {} WHERE id = $1",
            pq.table()
        ))
        .bind(id.0)
        .fetch_one(&mut direct().await)
        .await
        .unwrap();
        row
    };
    let started = version(db.pq.clone()).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        version(db.pq.clone()).await,
        started,
        "renewals of a 1 s lease did not write the job's row"
    );
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_connections_are_cut_keeps_its_lease() {
    let db = TestDb::new().await;
    let id = nap(6000).enqueue(&db.pq).await.unwrap();
    let proxy = Proxy::start().await;
    let through_proxy = db.handle_at(&proxy.url()).await;
    // Renewals every 800 ms, so a connection they used last is not checked when next taken.
    let lease = Duration::from_millis(2400);
    let first = tokio::spawn(
        Worker::new(through_proxy.clone())
            .queues(["held"])
            .lease(lease)
            .burst()
            .run(),
    );
    crate::support::wait_until(|| runs_of(&db.pq, id) == 1).await;
    let rival = rival(&db, "held", lease).await;
    // The application keeps the handle's connections busy, so that none sits idle long enough
    // to be checked before reuse.
    let noise = tokio::spawn(async move {
        loop {
            let _ = through_proxy.queue("noise").put(&0).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // Every connection through the proxy is cut, again and again: each renewal that finds its
    // connection dead must retry on a fresh one at once.
    let lapsed = format!(
        "SELECT count(*) FROM {} WHERE expires_at < now()",
        crate::support::derived(&db.pq, "workers")
    );
    let mut lapses = 0;
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.cut();
        let now_lapsed: i64 = sqlx::query_scalar(&lapsed)
            .fetch_one(db.pool())
            .await
            .unwrap();
        lapses += now_lapsed;
    }
    noise.abort();
    first.await.unwrap().unwrap();
    rival.stop().await.unwrap().unwrap();
    assert_eq!(
        lapses, 0,
        "the worker's registration lapsed while its connections were cut"
    );
    assert_eq!(runs_of(&db.pq, id), 1, "never run by the second worker");
    let held: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {} WHERE q_name = 'held'",
        db.pq.table()
    ))
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(held, 0, "completed");
}

#[tokio::test]
async fn a_heartbeat_whose_connection_died_goes_through_on_a_fresh_one_at_once() {
    let db = TestDb::new().await;
    let proxy = Proxy::start().await;
    let pq = db.handle_at(&proxy.url()).await;
    // Registering leaves its connection kept for pq's next statement...
    let claimer = crate::support::Claimer::new(&pq, &["q"]).await;
    // ...which dies before that statement comes, unbeknown to the pool.
    proxy.cut();
    let beat = pq.heartbeat(claimer.worker, &claimer.info).await;
    assert!(!beat.unwrap().lapsed, "renewed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_reply_was_lost_gives_its_jobs_back() {
    let db = TestDb::new().await;
    let proxy = Proxy::start().await;
    // A lease far longer than the test: only the worker itself can give the job back.
    let worker = Running::start(
        Worker::new(db.handle_at(&proxy.url()).await)
            .queues(["held"])
            .lease(Duration::from_secs(120))
            .poll_interval(Duration::from_millis(100)),
    );
    // A job the worker runs meanwhile, which must stay its own.
    let running = nap(3000).enqueue(&db.pq).await.unwrap();
    eventually(|| async { db.state_of(running).await.as_deref() == Some("running") }).await;
    // The worker's next claim takes the job and commits, but its reply never comes back...
    let lost = loop {
        proxy.hold_replies();
        let lost = nap(0).enqueue(&db.pq).await.unwrap();
        let claimed = async {
            while db.state_of(lost).await.as_deref() != Some("running") {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(3), claimed)
            .await
            .is_ok()
        {
            break lost;
        }
        // A statement was on its way when the replies were held (a claim of the poll before
        // the put): the worker waits for its reply and claims nothing more. Let it through,
        // and try again.
        proxy.thaw();
        eventually(|| async { db.state_of(lost).await.is_none() }).await;
    };
    // ...its connection breaks instead: the claim failed, as far as the worker knows.
    proxy.cut();
    proxy.thaw();
    eventually(|| async {
        db.state_of(lost).await.is_none() && db.state_of(running).await.is_none()
    })
    .await;
    worker.stop().await.unwrap().unwrap();
    assert_eq!(runs_of(&db.pq, lost), 1, "the lost claim's job ran once");
    assert_eq!(
        runs_of(&db.pq, running),
        1,
        "the running job was not given back"
    );
}

#[tokio::test]
async fn releasing_unknown_claims_keeps_the_known_ones_and_other_workers_jobs() {
    let db = TestDb::new().await;
    let queue = db.pq.queue("q");
    for n in 0..3 {
        queue.put(&n).await.unwrap();
    }
    let mut mine = Claimer::new(&db.pq, &["q"]).await;
    let mut theirs = Claimer::new(&db.pq, &["q"]).await;
    let held = mine.claim(2).await;
    let other = theirs.claim(1).await;
    assert_eq!((held.len(), other.len()), (2, 1));
    let known = held[0].claim().unwrap();
    let released = db.pq.release_unknown(mine.worker, &[known]).await.unwrap();
    assert_eq!(released, 1);
    assert_eq!(db.state_of(held[0].id()).await.as_deref(), Some("running"));
    assert_eq!(db.state_of(held[1].id()).await.as_deref(), Some("queued"));
    assert_eq!(db.state_of(other[0].id()).await.as_deref(), Some("running"));
    // Given back with its attempt uncounted.
    let again = mine.claim(1).await;
    assert_eq!(again[0].id(), held[1].id());
    assert_eq!(again[0].attempts(), 1);
}
