//! Every supported shape of task compiles: arguments, supplied parameters, return types,
//! async and plain functions, visibility, attributes and `cfg`, without a warning.

#![deny(warnings)]

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct Apple {
    pub kind: String,
    pub weight: f32,
}

/// Eats apples; the doc comment lands on the task's struct and call function.
#[pq::task(
    queue = "apples",
    schedule_at = "1h",
    expected_at = "2h",
    max_retries = 2,
    retry_in = "10s"
)]
pub async fn eat(ctx: pq::TaskContext, kind: String, count: u32) -> anyhow::Result<()> {
    println!("job {}: eating {count} {kind}", ctx.job_id());
    Ok(())
}

#[pq::task]
fn tally(job_id: pq::JobId, n: i64) {
    println!("job {job_id}: {n}");
}

#[pq::task(name = "fruit::weigh", backoff = "exponential", retry_in = "0s")]
pub(crate) async fn weigh(apples: Vec<Apple>, label: Option<String>) -> Result<(), String> {
    match label {
        Some(label) if apples.is_empty() => Err(format!("nothing to weigh for {label}")),
        _ => Ok(()),
    }
}

#[pq::task]
async fn ping() {}

/// An argument named like the generated code's locals, and an explicit `r#` name.
#[pq::task]
#[allow(clippy::too_many_arguments)]
fn shadows(
    ctx: String,
    r#type: String,
    #[allow(unused_mut)] mut count: u8,
) -> Result<(), std::io::Error> {
    count += 1;
    println!("{ctx} {type} {count}", type = r#type);
    Ok(())
}

/// Another `JobId` after the first parameter is an ordinary argument.
#[pq::task]
async fn follow_up(job_id: pq::JobId, previous: pq::JobId) {
    println!("{job_id} follows {previous}");
}

/// Deprecation warns the callers of the call function, not the generated code.
#[deprecated = "eat apples instead"]
#[pq::task]
fn old_eat(kind: String) {
    let _ = kind;
}

#[cfg(any())]
#[pq::task]
fn never_compiled(x: NoSuchType) {}

mod nested {
    #[pq::task(max_retries = 1)]
    pub fn inside(n: u64) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let _ = n;
        Ok(())
    }
}

/// Takes its parent's result; a plain function, so the parent's arrives on a blocking thread.
#[pq::task]
fn weigh_one(#[parent] apple: Apple, scale: f32) -> Result<f32, String> {
    Ok(apple.weight * scale)
}

/// Takes every parent's result, and tolerates a failed one.
#[pq::task]
async fn total(
    ctx: pq::TaskContext,
    #[parents] weights: Vec<Option<f32>>,
    #[parent] first: Option<f32>,
) -> anyhow::Result<f32> {
    println!("job {}: {first:?}", ctx.job_id());
    Ok(weights.into_iter().flatten().sum())
}

#[pq::task]
async fn pick(kind: String) -> anyhow::Result<Apple> {
    Ok(Apple { kind, weight: 0.2 })
}

fn main() {
    let call: pq::TaskCall<eat> = eat("Cox".into(), 3)
        .schedule_at("1m")
        .expected_at("2m")
        .queue("pears");
    assert_eq!(call.args().count, 3);
    assert_eq!(<eat as pq::Task>::OPTIONS.queue, "apples");
    assert_eq!(<eat as pq::Task>::OPTIONS.max_retries, 2);
    assert_eq!(
        <eat as pq::Task>::OPTIONS.retry_in,
        std::time::Duration::from_secs(10)
    );
    assert_eq!(
        <eat as pq::Task>::OPTIONS.schedule_at,
        Some(std::time::Duration::from_secs(3600))
    );
    assert!(<eat as pq::Task>::NAME.ends_with("::eat"));
    assert_eq!(<weigh as pq::Task>::NAME, "fruit::weigh");
    assert_eq!(
        <weigh as pq::Task>::OPTIONS.backoff,
        pq::Backoff::Exponential
    );
    assert_eq!(<tally as pq::Task>::OPTIONS, pq::TaskOptions::DEFAULT);
    assert!(<nested::inside as pq::Task>::NAME.ends_with("::nested::inside"));

    let _ = tally(1);
    let _ = weigh(
        vec![Apple {
            kind: "Cox".into(),
            weight: 0.2,
        }],
        None,
    );
    let _ = ping();
    let _ = shadows("a".into(), "b".into(), 1);
    let _ = follow_up(pq::JobId::from(7));
    let _ = nested::inside(1);
    #[allow(deprecated)]
    let _ = old_eat("Cox".into());

    // The bodies stay callable without a database.
    tally::run(pq::JobId::from(1), 2);
    shadows::run("a".into(), "b".into(), 1).unwrap();
    nested::inside::run(1).unwrap();

    let mut workflow = pq::Workflow::new();
    let apple = workflow.add(pick("Cox".into()));
    let weights: Vec<pq::Node<f32>> = (0..3).map(|_| workflow.add(weigh_one(apple, 2.0))).collect();
    let _ = workflow.add(
        total(&weights, weights[0])
            .after(apple)
            .on_parent_failure(pq::OnParentFailure::Run),
    );

    let registry = pq::Registry::from_inventory().expect("no duplicate names");
    assert_eq!(registry.len(), 11);
    assert_eq!(
        registry.get("fruit::weigh").unwrap().options.retry_in,
        std::time::Duration::ZERO
    );
}
