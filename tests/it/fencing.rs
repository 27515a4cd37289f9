//! A run that is no longer its job's live one changes nothing: its completion (with a result
//! or without), failure or release is refused, whatever happened to the job's attempt count since (a release, a
//! rescue, an operator's retry).

use std::time::Duration;

use pq::protocol::{Failure, Returned};
use pq::{JobHandle, JobState};

use crate::support::{complete, failed, Claimer, TestDb};

#[tokio::test]
async fn a_late_completion_after_a_release_and_a_reclaim_is_refused() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let id = pq.queue("fence").put(&1).await.unwrap();
    let mut first = Claimer::new(pq, &["fence"]).await;
    let mut second = Claimer::new(pq, &["fence"]).await;

    let stale = first.claim_one(id).await;
    assert_eq!(pq.release(&[stale]).await.unwrap(), [id]);
    let live = second.claim_one(id).await;

    // The first worker's late completion must not delete the job the second one runs, nor a
    // late result complete it, batched or in the handler's transaction.
    assert!(complete(pq, &[stale], false).await.is_empty());
    let returned = |claim| Returned {
        claim,
        result: "1".to_owned(),
        keep: Some(Duration::from_secs(60)),
    };
    let late = pq.complete_results(&[returned(stale)]).await.unwrap();
    assert!(late.is_empty());
    let mut tx = pq.pool().begin().await.unwrap();
    let late = pq.complete_returned(&mut *tx, &[returned(stale)]).await;
    assert!(late.unwrap().is_empty());
    drop(tx);
    let failure = failed(stale, "late", Failure::GiveUp);
    assert!(pq.fail(&[failure]).await.unwrap().is_empty());
    assert!(pq.release(&[stale]).await.unwrap().is_empty());
    let job = pq.admin().job(id).await.unwrap().expect("still there");
    assert_eq!((job.state, job.attempts), (JobState::Running, 1));

    assert_eq!(pq.complete_results(&[returned(live)]).await.unwrap(), [id]);
    assert_eq!(JobHandle::<u32>::new(id).result(pq).await.unwrap(), 1);
}

#[tokio::test]
async fn a_frozen_workers_late_failure_after_an_operators_retry_is_refused() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let id = pq.queue("fence").put(&1).await.unwrap();
    let mut frozen = Claimer::new(pq, &["fence"]).await;
    let mut other = Claimer::new(pq, &["fence"]).await;

    // Frozen past its lease: rescued, then run by another worker, which fails it for good.
    let stale = frozen.claim_one(id).await;
    frozen.expire().await;
    assert_eq!(pq.rescue(100, 3).await.unwrap(), 1);
    let second = other.claim_one(id).await;
    let gave_up = failed(second, "for good", Failure::GiveUp);
    assert_eq!(pq.fail(&[gave_up]).await.unwrap(), [id]);
    // The operator retries it: its attempts start over, and the third run begins.
    assert!(pq.admin().retry(id).await.unwrap());
    let third = other.claim_one(id).await;
    assert_eq!(third.id, id);

    // The frozen worker resumes and reports its run's failure: refused.
    frozen.heartbeat().await;
    let late = failed(stale, "late", Failure::GiveUp);
    assert!(pq.fail(&[late]).await.unwrap().is_empty());
    assert!(complete(pq, &[stale], false).await.is_empty());
    let job = pq.admin().job(id).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Running, 1));
    assert_eq!(complete(pq, &[third], false).await, [id]);
}
