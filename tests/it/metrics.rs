//! The worker's metrics, through a real exporter installed before the worker starts.

use pq::Worker;

use crate::support::TestDb;

#[pq::task(queue = "metered")]
async fn weigh(grams: u32) {
    let _ = grams;
}

#[pq::task(queue = "metered", max_retries = 0)]
async fn drop_on_the_floor() -> anyhow::Result<()> {
    anyhow::bail!("bruised")
}

#[tokio::test]
async fn a_worker_counts_each_attempt_by_task_queue_and_outcome() {
    // The only test that installs a recorder: the queue is its own, so that other tests'
    // workers, which record too from now on, count elsewhere.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("no other recorder is installed");
    let db = TestDb::new().await;
    for grams in [150, 180, 210] {
        weigh(grams).enqueue(&db.pq).await.unwrap();
    }
    drop_on_the_floor().enqueue(&db.pq).await.unwrap();
    Worker::new(db.pq.clone())
        .queues(["metered"])
        .burst()
        .run()
        .await
        .unwrap();

    let rendered = metrics.render();
    let value = |name: &str, task: &str| {
        let task = format!("task=\"it::metrics::{task}\"");
        rendered
            .lines()
            .find(|line| {
                line.starts_with(name) && line.contains(&task) && line.contains("queue=\"metered\"")
            })
            .and_then(|line| line.rsplit(' ').next())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no {name} for {task} in:\n{rendered}"))
    };
    assert_eq!(value("pq_jobs_enqueued_total", "weigh"), "3");
    assert_eq!(value("pq_jobs_started_total", "weigh"), "3");
    assert_eq!(value("pq_jobs_succeeded_total", "weigh"), "3");
    assert_eq!(value("pq_jobs_started_total", "drop_on_the_floor"), "1");
    assert_eq!(value("pq_jobs_failed_total", "drop_on_the_floor"), "1");
    assert!(
        rendered
            .lines()
            .any(|line| line.starts_with("pq_job_duration_seconds")
                && line.contains("it::metrics::weigh")
                && line.contains("outcome=\"succeeded\"")),
        "{rendered}"
    );
}
