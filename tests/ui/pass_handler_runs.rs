//! The registered handler decodes a job's JSON arguments and runs the body, async or on a
//! blocking thread, handing it the context or the job id it asks for. No database is needed:
//! the handle connects lazily and is never used.

#![deny(warnings)]

use std::sync::atomic::{AtomicI64, Ordering};

static LAST_SEEN: AtomicI64 = AtomicI64::new(0);

#[pq::task]
async fn eat(ctx: pq::TaskContext, kind: String, count: u32) -> Result<(), String> {
    if count == 0 {
        return Err(format!("no {kind} left in {}", ctx.queue()));
    }
    LAST_SEEN.store(ctx.job_id().0, Ordering::SeqCst);
    Ok(())
}

#[pq::task]
fn tally(job_id: pq::JobId, n: i64) {
    LAST_SEEN.store(job_id.0 * 1000 + n, Ordering::SeqCst);
}

#[pq::task]
fn choke() -> anyhow::Result<()> {
    anyhow::bail!("a pip")
}

async fn run(name: &str, job_id: i64, args: &str) -> Result<(), String> {
    let registry = pq::Registry::from_inventory().expect("no duplicate names");
    let task = registry.get(name).expect("registered");
    let pq = pq::Pq::connect_lazy("postgres://nobody@127.0.0.1:1/none").expect("a lazy handle");
    let ctx = pq::TaskContext::new(pq, pq::JobId::from(job_id), name, "orchard");
    let outcome = (task.handler)(ctx, args).map_err(|e| e.to_string())?;
    // A task that returns nothing stores no result.
    outcome
        .await
        .map(|result| assert_eq!(result, None))
        .map_err(|e| e.to_string())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let eat = <eat as pq::Task>::NAME;
        assert_eq!(run(eat, 7, r#"{"kind":"Cox","count":3}"#).await, Ok(()));
        assert_eq!(LAST_SEEN.load(Ordering::SeqCst), 7);
        assert_eq!(
            run(eat, 8, r#"{"kind":"Cox","count":0}"#).await,
            Err("no Cox left in orchard".to_owned())
        );
        let undecodable = run(eat, 9, r#"{"kind":"Cox"}"#).await.unwrap_err();
        assert!(
            undecodable.contains("missing field `count`"),
            "{undecodable}"
        );

        assert_eq!(
            run(<tally as pq::Task>::NAME, 4, r#"{"n":2}"#).await,
            Ok(())
        );
        assert_eq!(LAST_SEEN.load(Ordering::SeqCst), 4002);

        assert_eq!(
            run(<choke as pq::Task>::NAME, 1, "{}").await,
            Err("a pip".to_owned())
        );
    });

    // The body is callable directly too.
    tally::run(pq::JobId::from(5), 1);
    assert_eq!(LAST_SEEN.load(Ordering::SeqCst), 5001);
}
