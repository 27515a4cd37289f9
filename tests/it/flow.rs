//! Flow control: a worker claims only the jobs of the tasks it registered, so that old and new
//! binaries share a queue during a rolling deploy.

use pq::{JobId, Registry, TaskContext, TaskDefinition, Worker};

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
