//! OpenTelemetry (the `otel` feature): an enqueue's `send` span, each run's `process` span, and
//! the rule that ties them: a child for a first run soon after its enqueue, a link otherwise.
//! Spans go through tracing-opentelemetry's layer to an in-memory exporter, on the test's own
//! thread (a `#[tokio::test]` runs the worker's tasks there too).

use opentelemetry::trace::{SpanId, SpanKind, TraceId, TracerProvider as _};
use opentelemetry::{KeyValue, Value};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use pq::{testing, JobId, TaskContext};
use tracing_subscriber::layer::SubscriberExt;

use crate::support::TestDb;

/// Fails its first run (with a retry due at once) when asked to.
#[pq::task(queue = "traced", max_retries = 1, retry_in = "0s")]
async fn traced(ctx: TaskContext, fail_first: bool) -> anyhow::Result<()> {
    anyhow::ensure!(!(fail_first && ctx.attempt() == 1), "the first run fails");
    Ok(())
}

/// Spans of this thread, exported to memory while it lives.
struct Traces {
    exporter: InMemorySpanExporter,
    _provider: SdkTracerProvider,
    _default: tracing::subscriber::DefaultGuard,
}

impl Traces {
    fn record() -> Traces {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("pq-test"));
        let subscriber = tracing_subscriber::registry().with(layer);
        let default = tracing::subscriber::set_default(subscriber);
        // A callsite another test's thread registered while this thread's subscriber was being
        // set can keep the interest it had then, none: the runs' spans went unrecorded (in CI,
        // under load). Asked again, every callsite sees this subscriber.
        tracing::callsite::rebuild_interest_cache();
        Traces {
            exporter,
            _provider: provider,
            _default: default,
        }
    }

    fn named(&self, name: &str) -> Vec<SpanData> {
        let mut spans: Vec<SpanData> = self
            .exporter
            .get_finished_spans()
            .expect("the exporter's spans")
            .into_iter()
            .filter(|span| span.name == name)
            .collect();
        spans.sort_by_key(|span| span.start_time);
        spans
    }
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|KeyValue { key: k, .. }| k.as_str() == key)
        .map(|kv| &kv.value)
}

/// A span's trace and span ids.
fn ids(span: &SpanData) -> (TraceId, SpanId) {
    (span.span_context.trace_id(), span.span_context.span_id())
}

/// The trace and span ids of the spans `span` links to.
fn links(span: &SpanData) -> Vec<(TraceId, SpanId)> {
    let links = span.links.iter();
    links
        .map(|link| (link.span_context.trace_id(), link.span_context.span_id()))
        .collect()
}

/// Enqueues inside a `request` span, as a web handler would.
async fn enqueue_in_a_request(pq: &pq::Pq, fail_first: bool) -> JobId {
    use tracing::Instrument;
    traced(fail_first)
        .enqueue(pq)
        .instrument(tracing::info_span!("request"))
        .await
        .expect("enqueue")
}

#[tokio::test]
async fn a_first_run_is_a_child_of_the_enqueue_and_its_retry_is_linked_to_it() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    // In CI, under load, the runs of this test have three times (of some twenty runs) left no
    // process span at all, though both ran: a thread's subscriber missed by tracing's
    // process-wide cache of each callsite's interest, it seems, not explained yet. A try whose
    // runs left none is made again, on a new job, up to three times; the last is checked whole.
    let mut tries = 0;
    let (traces, id) = loop {
        tries += 1;
        let traces = Traces::record();
        let id = enqueue_in_a_request(pq, true).await;
        let report = testing::run_ready(pq).await.expect("run");
        assert_eq!((report.retried, report.succeeded), (1, 1), "{report}");
        if tries == 3 || !traces.named("process traced").is_empty() {
            break (traces, id);
        }
    };

    let [request] = &traces.named("request")[..] else {
        panic!("one request span")
    };
    let [send] = &traces.named("send traced")[..] else {
        panic!("one send span")
    };
    assert_eq!(send.span_kind, SpanKind::Producer);
    assert_eq!(send.parent_span_id, request.span_context.span_id());
    assert_eq!(
        attribute(send, "messaging.destination.name"),
        Some(&Value::from("traced"))
    );
    assert_eq!(
        attribute(send, "messaging.message.id"),
        Some(&Value::I64(id.0))
    );
    assert_eq!(
        attribute(send, "messaging.system"),
        Some(&Value::from("pq"))
    );

    let runs = traces.named("process traced");
    let [first, retry] = &runs[..] else {
        panic!("two process spans, not {}: {runs:#?}", runs.len())
    };
    for run in [first, retry] {
        assert_eq!(run.span_kind, SpanKind::Consumer);
        assert_eq!(
            attribute(run, "messaging.message.id"),
            Some(&Value::I64(id.0))
        );
        assert_eq!(
            attribute(run, "messaging.operation.type"),
            Some(&Value::from("process"))
        );
    }
    // The first run continues the request's trace, under its send span.
    assert_eq!(first.span_context.trace_id(), send.span_context.trace_id());
    assert_eq!(first.parent_span_id, send.span_context.span_id());
    assert!(first.parent_span_is_remote);
    assert!(first.links.is_empty());
    // Its retry starts a trace of its own, linked to the send span.
    assert_ne!(retry.span_context.trace_id(), send.span_context.trace_id());
    assert_eq!(retry.parent_span_id, SpanId::INVALID);
    assert_eq!(links(retry), [ids(send)]);
}

#[tokio::test]
async fn a_run_that_starts_long_after_its_enqueue_is_linked_not_a_child() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let traces = Traces::record();
    let id = enqueue_in_a_request(pq, false).await;
    // As if the worker had been away for longer than the parent window.
    sqlx::query(&format!(
        "UPDATE {} SET enqueued_at = enqueued_at - $2 * interval '1 second' WHERE id = $1",
        pq.table()
    ))
    .bind(id.0)
    .bind(pq::PARENT_WITHIN.as_secs_f64() + 60.0)
    .execute(db.pool())
    .await
    .expect("age the job");

    let report = testing::run_ready(pq).await.expect("run");
    assert_eq!(report.succeeded, 1, "{report}");

    let [send] = &traces.named("send traced")[..] else {
        panic!("one send span")
    };
    let [run] = &traces.named("process traced")[..] else {
        panic!("one process span")
    };
    assert_eq!(run.parent_span_id, SpanId::INVALID);
    assert_ne!(run.span_context.trace_id(), send.span_context.trace_id());
    assert_eq!(links(run), [ids(send)]);
}

#[tokio::test]
async fn a_job_enqueued_without_an_opentelemetry_layer_carries_no_trace_context() {
    let db = TestDb::new().await;
    let pq = &db.pq;
    let plain = traced(false).enqueue(pq).await.expect("enqueue");
    let traced_id = {
        let _traces = Traces::record();
        enqueue_in_a_request(pq, false).await
    };

    let sql = format!(
        "SELECT meta->>'traceparent' FROM {} WHERE id = $1",
        pq.table()
    );
    let meta = |id: JobId| {
        sqlx::query_scalar::<_, Option<String>>(&sql)
            .bind(id.0)
            .fetch_one(db.pool())
    };
    assert_eq!(meta(plain).await.expect("read"), None);
    let traceparent = meta(traced_id).await.expect("read").expect("a traceparent");
    assert!(
        traceparent.starts_with("00-") && traceparent.len() == 55,
        "{traceparent}"
    );
}
