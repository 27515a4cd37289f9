//! Dependencies and workflows: a job waits for its parents, takes their results, and becomes
//! ready in the transaction that ends the last of them.

use pq::{Error, JobState, OnParentFailure, TaskContext, Worker, Workflow};
use serde::{Deserialize, Serialize};

use crate::support::{record_run, result_of, runs_of, Running, TestDb};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Page {
    url: String,
    words: u32,
}

#[pq::task(queue = "flows")]
async fn fetch(url: String) -> anyhow::Result<Page> {
    Ok(Page { url, words: 3 })
}

#[pq::task(queue = "flows")]
async fn count(#[parent] page: Page, times: u32) -> anyhow::Result<u32> {
    Ok(page.words * times)
}

#[pq::task(queue = "flows")]
async fn square(ctx: TaskContext, n: u64) -> anyhow::Result<u64> {
    record_run(&ctx);
    Ok(n * n)
}

#[pq::task(queue = "flows")]
async fn sum(ctx: TaskContext, #[parents] squares: Vec<u64>) -> anyhow::Result<(u32, Vec<u64>)> {
    let runs = record_run(&ctx);
    Ok((runs, squares))
}

#[pq::task(queue = "flows", max_retries = 0)]
async fn break_down(why: String) -> anyhow::Result<u64> {
    anyhow::bail!("broke down: {why}")
}

#[pq::task(queue = "flows")]
async fn tolerate(#[parents] results: Vec<Option<u64>>) -> anyhow::Result<Vec<Option<u64>>> {
    Ok(results)
}

#[pq::task(queue = "flows")]
async fn after_one(#[parent] value: Option<u64>) -> anyhow::Result<Option<u64>> {
    Ok(value)
}

#[pq::task(queue = "flows")]
async fn note(text: String) -> anyhow::Result<String> {
    Ok(text)
}

fn worker(db: &TestDb) -> Worker {
    Worker::new(db.pq.clone()).queues(["flows"]).concurrency(16)
}

#[tokio::test]
async fn a_child_takes_its_parents_result_once_the_parent_succeeds() {
    let db = TestDb::new().await;
    let mut workflow = Workflow::new();
    let page = workflow.add(fetch("https://example.com".into()));
    let counted = workflow.add(count(page, 2));
    let noted = workflow.add(note("after both".into()).after(page).after(counted));
    let enqueued = workflow.enqueue(&db.pq).await.unwrap();
    assert_eq!(enqueued.jobs().len(), 3);
    let (page, counted, noted) = (
        enqueued.handle(page),
        enqueued.handle(counted),
        enqueued.handle(noted),
    );
    assert_eq!(page.status(&db.pq).await.unwrap(), JobState::Ready);
    assert_eq!(counted.status(&db.pq).await.unwrap(), JobState::Waiting);
    assert_eq!(noted.status(&db.pq).await.unwrap(), JobState::Waiting);

    let running = Running::start(worker(&db));
    assert_eq!(result_of(&db, counted).await.unwrap(), 6);
    assert_eq!(result_of(&db, noted).await.unwrap(), "after both");
    assert_eq!(result_of(&db, page).await.unwrap().words, 3);
    running.stop().await.unwrap().unwrap();
}

#[tokio::test]
async fn a_thousand_way_fan_out_fans_in_once_with_every_result_in_order() {
    let db = TestDb::new().await;
    let mut workflow = Workflow::new();
    let squares: Vec<_> = (1..=1000u64).map(|n| workflow.add(square(n))).collect();
    let total = workflow.add(sum(&squares));
    let enqueued = workflow.enqueue(&db.pq).await.unwrap();
    let total = enqueued.handle(total);

    let running = Running::start(worker(&db).concurrency(64));
    let (runs, squares) = result_of(&db, total).await.unwrap();
    running.stop().await.unwrap().unwrap();
    assert_eq!(runs, 1, "the callback ran once");
    assert_eq!(squares, (1..=1000u64).map(|n| n * n).collect::<Vec<_>>());
    for id in &enqueued.jobs()[..1000] {
        assert_eq!(runs_of(&db.pq, *id), 1);
    }
}

#[tokio::test]
async fn a_failed_parent_fails_its_children_and_theirs_by_default() {
    let db = TestDb::new().await;
    let mut workflow = Workflow::new();
    let broken = workflow.add(break_down("a flat".into()));
    let child = workflow.add(after_one(broken));
    let grandchild = workflow.add(note("never".into()).after(child));
    let enqueued = workflow.enqueue(&db.pq).await.unwrap();

    let running = Running::start(worker(&db));
    let error = result_of(&db, enqueued.handle(grandchild))
        .await
        .unwrap_err();
    running.stop().await.unwrap().unwrap();
    let Error::JobFailed {
        error,
        cancelled: false,
        ..
    } = error
    else {
        panic!("{error}");
    };
    let child_id = enqueued.job(child);
    assert!(
        error.starts_with(&format!("parent job {child_id} failed")),
        "{error}"
    );
    let Error::JobFailed { error, .. } = enqueued.handle(child).result(&db.pq).await.unwrap_err()
    else {
        panic!("the child failed");
    };
    assert!(error.contains("broke down: a flat"), "{error}");
    assert_eq!(runs_of(&db.pq, child_id), 0);
}

#[tokio::test]
async fn a_child_that_runs_anyway_gets_none_for_a_failed_parent() {
    let db = TestDb::new().await;
    let mut workflow = Workflow::new();
    let good = workflow.add(square(3));
    let bad = workflow.add(break_down("a flat".into()));
    let both = workflow.add(tolerate([good, bad]).on_parent_failure(OnParentFailure::Run));
    let enqueued = workflow.enqueue(&db.pq).await.unwrap();

    let running = Running::start(worker(&db));
    let results = result_of(&db, enqueued.handle(both)).await.unwrap();
    running.stop().await.unwrap().unwrap();
    assert_eq!(results, [Some(9), None]);
}

#[tokio::test]
async fn a_failed_parent_can_cancel_the_rest_of_its_workflow() {
    let db = TestDb::new().await;
    let mut workflow = Workflow::new();
    let bad = workflow.add(break_down("a flat".into()));
    let later = workflow.add(
        note("later".into())
            .schedule_at("1h")
            .on_parent_failure(OnParentFailure::CancelWorkflow)
            .after(bad),
    );
    let unrelated = workflow.add(note("unrelated".into()).schedule_at("1h"));
    let last = workflow.add(note("last".into()).after(later).after(unrelated));
    let enqueued = workflow.enqueue(&db.pq).await.unwrap();

    let running = Running::start(worker(&db));
    for node in [later, last] {
        let error = result_of(&db, enqueued.handle(node)).await.unwrap_err();
        assert!(
            matches!(
                error,
                Error::JobFailed {
                    cancelled: true,
                    ..
                }
            ),
            "{error}"
        );
    }
    running.stop().await.unwrap().unwrap();
    // Scheduled, not started, and in the workflow: cancelled too.
    assert_eq!(
        enqueued.handle(unrelated).status(&db.pq).await.unwrap(),
        JobState::Cancelled
    );
}

#[tokio::test]
async fn a_job_may_wait_for_jobs_already_enqueued_whatever_became_of_them() {
    let db = TestDb::new().await;
    let done = square(4).enqueue(&db.pq).await.unwrap();
    let running = Running::start(worker(&db));
    assert_eq!(result_of(&db, done).await.unwrap(), 16);
    let failed = break_down("already".into()).enqueue(&db.pq).await.unwrap();
    assert!(result_of(&db, failed).await.is_err());

    // Ended before the child was added: counted at once.
    let after_done = after_one(done).enqueue(&db.pq).await.unwrap();
    assert_eq!(result_of(&db, after_done).await.unwrap(), Some(16));
    let after_failed = note("no".into())
        .after(failed)
        .enqueue(&db.pq)
        .await
        .unwrap();
    assert!(result_of(&db, after_failed).await.is_err());
    running.stop().await.unwrap().unwrap();

    // Not ended yet: the child waits for it.
    let pending = square(5).schedule_at("1h").enqueue(&db.pq).await.unwrap();
    let child = after_one(pending).enqueue(&db.pq).await.unwrap();
    assert_eq!(child.status(&db.pq).await.unwrap(), JobState::Waiting);
    assert!(db.pq.admin().schedule_job_now(pending.id()).await.unwrap());
    let running = Running::start(worker(&db));
    assert_eq!(result_of(&db, child).await.unwrap(), Some(25));
    running.stop().await.unwrap().unwrap();
}

#[tokio::test]
async fn a_node_of_another_workflow_is_refused_and_nothing_is_written() {
    let db = TestDb::new().await;
    let mut first = Workflow::new();
    let page = first.add(fetch("a".into()));
    let mut second = Workflow::new();
    second.add(fetch("b".into()));
    second.add(count(page, 1));
    let error = second.enqueue(&db.pq).await.unwrap_err();
    assert!(matches!(error, Error::InvalidGraph { .. }), "{error}");
    assert_eq!(db.pq.queue("flows").len().await.unwrap(), 0);

    // Nor can a call that waits for a node be enqueued alone.
    let error = count(page, 1).enqueue(&db.pq).await.unwrap_err();
    assert!(matches!(error, Error::InvalidGraph { .. }), "{error}");
}

/// Ends job `id` as a completion would, in `tx`, with `result` (JSON).
async fn end(tx: &mut sqlx::PgConnection, table: &str, id: pq::JobId, result: &str) {
    sqlx::query(&format!(
        "UPDATE {table} SET state = 'done', result = $2::json WHERE id = $1"
    ))
    .bind(id.0)
    .bind(result)
    .execute(tx)
    .await
    .unwrap();
}

#[tokio::test]
async fn two_parents_ending_at_once_release_their_child_once() {
    let db = TestDb::new().await;
    let table = db.pq.table().to_owned();
    let mut workflow = Workflow::new();
    let (a, b) = (workflow.add(square(1)), workflow.add(square(2)));
    let child = workflow.add(tolerate([a, b]));
    let enqueued = workflow.enqueue(&db.pq).await.unwrap();

    // Parents are settled as their transaction commits; the first settles now, holding the
    // child's row until it commits.
    let mut first = db.pool().begin().await.unwrap();
    sqlx::query("SET CONSTRAINTS ALL IMMEDIATE")
        .execute(&mut *first)
        .await
        .unwrap();
    end(&mut first, &table, enqueued.job(a), "1").await;
    // The second parent's commit waits for the first's on the child's row, then counts from
    // what it committed, and takes both results.
    let second = tokio::spawn({
        let (pool, table, b) = (db.pool().clone(), table.clone(), enqueued.job(b));
        async move {
            let mut second = pool.begin().await.unwrap();
            end(&mut second, &table, b, "4").await;
            second.commit().await.unwrap();
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "the second parent's commit waits on the child's row"
    );
    assert_eq!(
        db.state_of(enqueued.job(child)).await.as_deref(),
        Some("waiting")
    );
    first.commit().await.unwrap();
    second.await.unwrap();

    assert_eq!(
        db.state_of(enqueued.job(child)).await.as_deref(),
        Some("queued")
    );
    let running = Running::start(worker(&db));
    let results = result_of(&db, enqueued.handle(child)).await.unwrap();
    running.stop().await.unwrap().unwrap();
    assert_eq!(results, [Some(1), Some(4)]);
}

#[tokio::test]
async fn a_parent_ending_while_its_child_is_added_is_counted_either_way() {
    let db = TestDb::new().await;
    let table = db.pq.table().to_owned();
    for child_first in [true, false] {
        let parent = square(2).schedule_at("1h").enqueue(&db.pq).await.unwrap();
        let mut adding = db.pool().begin().await.unwrap();
        let mut ending = db.pool().begin().await.unwrap();
        let child = if child_first {
            // The child's enqueue holds the parent; the parent's end waits, then sees the edge.
            let child = after_one(parent)
                .enqueue(db.pq.on(&mut adding))
                .await
                .unwrap();
            let ended = tokio::spawn({
                let table = table.clone();
                async move {
                    end(&mut ending, &table, parent.id(), "4").await;
                    ending.commit().await.unwrap();
                }
            });
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            assert!(
                !ended.is_finished(),
                "the end waits for the child's transaction"
            );
            adding.commit().await.unwrap();
            ended.await.unwrap();
            child
        } else {
            // The parent ended first, uncommitted: the child's enqueue waits for it, then
            // counts it at once.
            end(&mut ending, &table, parent.id(), "4").await;
            let pq = db.pq.clone();
            let added = tokio::spawn(async move {
                let child = after_one(parent).enqueue(pq.on(&mut adding)).await.unwrap();
                adding.commit().await.unwrap();
                child
            });
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            assert!(
                !added.is_finished(),
                "the child's enqueue waits for the parent's end"
            );
            ending.commit().await.unwrap();
            added.await.unwrap()
        };
        assert_eq!(
            db.state_of(child.id()).await.as_deref(),
            Some("queued"),
            "child added {}",
            if child_first { "first" } else { "second" }
        );
        let running = Running::start(worker(&db));
        assert_eq!(result_of(&db, child).await.unwrap(), Some(4));
        running.stop().await.unwrap().unwrap();
    }
}

#[pq::task(queue = "flows")]
async fn tick() {}

#[tokio::test]
async fn edges_go_once_neither_of_their_jobs_is_in_the_table() {
    let db = TestDb::new().await;
    let mut workflow = Workflow::new();
    let first = workflow.add(tick());
    workflow.add(tick().after(first));
    let done = workflow.enqueue(&db.pq).await.unwrap();
    let mut workflow = Workflow::new();
    let later = workflow.add(tick().schedule_at("1h"));
    workflow.add(tick().after(later));
    let waiting = workflow.enqueue(&db.pq).await.unwrap();

    crate::support::burst(Worker::new(db.pq.clone()), "flows").await;
    assert_eq!(
        db.state_of(done.jobs()[1]).await,
        None,
        "the child ran and was deleted"
    );
    assert_eq!(db.state_of(done.jobs()[0]).await.as_deref(), Some("done"));
    assert_eq!(
        db.pq.sweep_edges(1000).await.unwrap(),
        0,
        "its parent is still there"
    );
    // Kept for its children's sake only: it expires at once.
    assert_eq!(db.pq.expire(1000).await.unwrap(), 1);
    assert_eq!(db.pq.sweep_edges(1000).await.unwrap(), 1);
    assert_eq!(db.pq.sweep_edges(1000).await.unwrap(), 0);
    let edges = db.pq.admin().dependencies(waiting.jobs()[0]).await.unwrap();
    assert_eq!(edges.len(), 1, "the waiting workflow keeps its edge");
    assert!(db.pq.admin().workflow(done.id()).await.unwrap().is_none());
    let shown = db.pq.admin().workflow(waiting.id()).await.unwrap().unwrap();
    assert_eq!(shown.jobs.len(), 2);
    assert_eq!(shown.jobs[1].state, JobState::Waiting);
}

#[tokio::test]
async fn a_parent_completed_while_it_gains_a_child_is_kept_done_and_releases_it() {
    let db = TestDb::new().await;
    let parent = tick().enqueue(&db.pq).await.unwrap();
    let mut claimer = crate::support::Claimer::new(&db.pq, &["flows"]).await;
    let claim = claimer.claim_one(parent).await;

    // The child's enqueue holds the parent while the handler's completion (by id, as in its
    // own transaction) waits for it: the completion must see that the job now has a child.
    let mut adding = db.pool().begin().await.unwrap();
    let child = note("released".into())
        .after(parent)
        .enqueue(db.pq.on(&mut adding))
        .await
        .unwrap();
    let completed = tokio::spawn({
        let pq = db.pq.clone();
        async move { crate::support::complete(&pq, &[claim], false).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !completed.is_finished(),
        "the completion waits for the child's transaction"
    );
    adding.commit().await.unwrap();
    assert_eq!(completed.await.unwrap(), [parent]);

    assert_eq!(
        db.state_of(parent).await.as_deref(),
        Some("done"),
        "kept, not deleted"
    );
    assert_eq!(db.state_of(child.id()).await.as_deref(), Some("queued"));
    // Deleting a job others wait for cancels it first: its children settle.
    let waiting = tick().schedule_at("1h").enqueue(&db.pq).await.unwrap();
    let orphan = note("never".into())
        .after(waiting)
        .enqueue(&db.pq)
        .await
        .unwrap();
    assert!(db.pq.admin().delete(waiting).await.unwrap());
    assert_eq!(db.state_of(orphan.id()).await.as_deref(), Some("failed"));
    let cleared = tick().schedule_at("1h").enqueue(&db.pq).await.unwrap();
    let orphan = note("never".into())
        .after(cleared)
        .enqueue(&db.pq)
        .await
        .unwrap();
    db.pq.queue("flows").clear().await.unwrap();
    assert_eq!(
        db.state_of(orphan.id()).await,
        None,
        "cleared with its queue"
    );
}

/// A graph of plain jobs on `queue`, each waiting for the places `edges` give.
fn graph(
    queue: &str,
    jobs: usize,
    edges: &[(usize, usize)],
    on_failure: OnParentFailure,
) -> pq::Graph {
    let mut graph = pq::Graph::new();
    for n in 0..jobs {
        graph.add(pq::NewJob::new(queue, &n).unwrap());
    }
    for &(parent, child) in edges {
        graph.edge(pq::Edge {
            parent: pq::Parent::New(parent),
            child,
            input: pq::Input::Nothing,
            on_failure,
        });
    }
    graph
}

#[tokio::test]
async fn a_failure_cascades_down_a_long_chain_in_one_commit() {
    let db = TestDb::new().await;
    let edges: Vec<_> = (1..600).map(|n| (n - 1, n)).collect();
    let chain = db
        .pq
        .enqueue_graph(graph("chain", 600, &edges, OnParentFailure::Fail))
        .await
        .unwrap();
    sqlx::query(&format!(
        "UPDATE {} SET state = 'failed', last_error = 'broke' WHERE id = $1",
        db.pq.table()
    ))
    .bind(chain.jobs[0].0)
    .execute(db.pool())
    .await
    .unwrap();
    let last = db.pq.admin().job(chain.jobs[599]).await.unwrap().unwrap();
    assert_eq!(last.state, JobState::Failed);
    let error = last.last_error.unwrap();
    assert!(
        error.starts_with(&format!("parent job {} failed", chain.jobs[598])),
        "{error}"
    );
}

#[tokio::test]
async fn an_edge_added_to_an_ended_parent_counts_for_its_own_child_only() {
    let db = TestDb::new().await;
    let (p, q) = (
        square(2).enqueue(&db.pq).await.unwrap(),
        square(3).schedule_at("1h").enqueue(&db.pq).await.unwrap(),
    );
    let mut claimer = crate::support::Claimer::new(&db.pq, &["flows"]).await;
    let claim = claimer.claim_one(p.id()).await;
    let returned = pq::protocol::Returned {
        claim,
        result: "4".into(),
        keep: None,
    };
    assert_eq!(db.pq.complete_results(&[returned]).await.unwrap(), [p.id()]);
    // Waits for q alone, p counted.
    let first = tolerate([p, q]).enqueue(&db.pq).await.unwrap();
    assert_eq!(first.status(&db.pq).await.unwrap(), JobState::Waiting);
    // Another child of p, added now, is counted at once; the first still waits for q.
    let second = after_one(p).enqueue(&db.pq).await.unwrap();
    assert_eq!(second.status(&db.pq).await.unwrap(), JobState::Ready);
    assert_eq!(first.status(&db.pq).await.unwrap(), JobState::Waiting);
}

#[tokio::test]
async fn a_fan_in_of_no_parents_runs_with_none() {
    let db = TestDb::new().await;
    let none: [pq::Node<u64>; 0] = [];
    let mut workflow = Workflow::new();
    let total = workflow.add(sum(none));
    let enqueued = workflow.enqueue(&db.pq).await.unwrap();
    let running = Running::start(worker(&db));
    let (_, squares) = result_of(&db, enqueued.handle(total)).await.unwrap();
    running.stop().await.unwrap().unwrap();
    assert!(squares.is_empty());
}

#[tokio::test]
async fn cancelling_a_workflow_spares_jobs_enqueued_before_it() {
    let db = TestDb::new().await;
    let outside = note("outside".into())
        .schedule_at("1h")
        .enqueue(&db.pq)
        .await
        .unwrap();
    let mut workflow = Workflow::new();
    let bad = workflow.add(break_down("a flat".into()));
    let inside = workflow.add(
        note("inside".into())
            .after(bad)
            .after(outside)
            .on_parent_failure(OnParentFailure::CancelWorkflow),
    );
    let enqueued = workflow.enqueue(&db.pq).await.unwrap();
    let running = Running::start(worker(&db));
    let error = result_of(&db, enqueued.handle(inside)).await.unwrap_err();
    running.stop().await.unwrap().unwrap();
    assert!(
        matches!(
            error,
            Error::JobFailed {
                cancelled: true,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(outside.status(&db.pq).await.unwrap(), JobState::Scheduled);
}

#[tokio::test]
async fn clearing_a_queue_settles_the_children_of_its_parents_even_running_ones() {
    let db = TestDb::new().await;
    let parent = tick().queue("elsewhere").enqueue(&db.pq).await.unwrap();
    let child = note("never".into())
        .after(parent)
        .enqueue(&db.pq)
        .await
        .unwrap();
    let mut claimer = crate::support::Claimer::new(&db.pq, &["elsewhere"]).await;
    let claim = claimer.claim_one(parent).await;
    assert_eq!(db.pq.queue("elsewhere").clear().await.unwrap(), 1);
    assert_eq!(db.state_of(parent).await, None);
    // Cancelled then deleted, in one transaction behind a transaction pooler (whose
    // statements pq wraps in one) or in two: the child fails by it either way.
    let error = child.result(&db.pq).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains(&format!("parent job {parent} cancelled")),
        "{error}"
    );
    // The run's outcome is refused.
    assert!(crate::support::complete(&db.pq, &[claim], false)
        .await
        .is_empty());
}

#[tokio::test]
async fn deleting_the_head_of_a_long_chain_fails_it_all_and_a_parent_gone_keeps_its_outcome() {
    let db = TestDb::new().await;
    let edges: Vec<_> = (1..600).map(|n| (n - 1, n)).collect();
    let chain = db
        .pq
        .enqueue_graph(graph("chain", 600, &edges, OnParentFailure::Fail))
        .await
        .unwrap();
    assert!(db.pq.admin().delete(chain.jobs[0]).await.unwrap());
    let last = db.pq.admin().job(chain.jobs[599]).await.unwrap().unwrap();
    assert_eq!(last.state, JobState::Failed);

    // A parent that failed and was deleted before its transaction committed: its child fails.
    let pair = db
        .pq
        .enqueue_graph(graph("pair", 2, &[(0, 1)], OnParentFailure::Fail))
        .await
        .unwrap();
    let mut tx = db.pool().begin().await.unwrap();
    for statement in [
        "UPDATE {t} SET state = 'failed', last_error = 'broke' WHERE id = $1",
        "DELETE FROM {t} WHERE id = $1",
    ] {
        sqlx::query(&statement.replace("{t}", &db.pq.table()))
            .bind(pair.jobs[0].0)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(db.state_of(pair.jobs[1]).await.as_deref(), Some("failed"));
}

#[tokio::test]
async fn a_job_enqueued_before_the_workflow_failing_cancels_the_workflow_all_the_same() {
    let db = TestDb::new().await;
    let outside = break_down("outside".into()).enqueue(&db.pq).await.unwrap();
    let mut workflow = Workflow::new();
    let root = workflow.add(note("root".into()).schedule_at("1h"));
    let child = workflow.add(
        note("child".into())
            .after(outside)
            .on_parent_failure(OnParentFailure::CancelWorkflow),
    );
    let sibling = workflow.add(note("sibling".into()).after(root));
    let enqueued = workflow.enqueue(&db.pq).await.unwrap();
    let running = Running::start(worker(&db));
    let error = result_of(&db, enqueued.handle(child)).await.unwrap_err();
    running.stop().await.unwrap().unwrap();
    assert!(
        matches!(
            error,
            Error::JobFailed {
                cancelled: true,
                ..
            }
        ),
        "{error}"
    );
    for node in [root, sibling] {
        assert_eq!(
            enqueued.handle(node).status(&db.pq).await.unwrap(),
            JobState::Cancelled
        );
    }
}
