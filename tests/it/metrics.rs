//! The worker's metrics, through a real exporter installed before the worker starts.

use metrics::SharedString;
use pq::Worker;

use crate::support::{burst, TestDb};

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
    // The only test that installs a global recorder: the queue is its own, so that other
    // tests' workers, which record too from now on, count elsewhere.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("no other recorder is installed");
    let db = TestDb::new().await;
    for grams in [150, 180, 210] {
        weigh(grams).enqueue(&db.pq).await.unwrap();
    }
    drop_on_the_floor().enqueue(&db.pq).await.unwrap();
    burst(Worker::new(db.pq.clone()), "metered").await;

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

#[pq::task(queue = "unmetered")]
async fn shrug() {}

/// A recorder whose every registration panics.
struct Panicking;

impl metrics::Recorder for Panicking {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: SharedString) {}
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        panic!("the recorder is broken")
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        panic!("the recorder is broken")
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        panic!("the recorder is broken")
    }
}

#[tokio::test] // One thread: the worker's tasks all see this thread's recorder.
async fn a_recorder_that_panics_does_not_stop_the_worker() {
    let db = TestDb::new().await;
    let id = shrug().enqueue(&db.pq).await.unwrap();
    let _broken = metrics::set_default_local_recorder(&Panicking);
    burst(Worker::new(db.pq.clone()), "unmetered").await;
    assert!(
        db.pq.admin().job(id).await.unwrap().is_none(),
        "job {id} done and deleted"
    );
}
