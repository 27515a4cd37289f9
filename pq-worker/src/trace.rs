//! The spans of a job's life, named and described as OpenTelemetry's messaging conventions
//! say: `send {queue}` around an enqueue, `process {queue}` around each run. With the `otel`
//! feature, an enqueue carries its span's trace context into the job (`traceparent` in its
//! meta), and each run joins that trace: as a child of the `send` span for a first attempt that
//! starts soon after it, as a span linked to it otherwise (a retry, a late or scheduled start),
//! since a trace should show what one request caused, not a run hours later.
//!
//! Spans are `tracing` spans at the INFO level, and cost nothing unless a subscriber wants them;
//! `tracing-opentelemetry` turns them into OpenTelemetry spans (`otel.name`, `otel.kind`).

use pq_core::{Job, NewJob};
use tracing::field::Empty;
use tracing::Span;

/// What `messaging.system` says of pq's spans.
const SYSTEM: &str = "pq";

/// How soon after its enqueue a first run must start to be a child of the enqueuer's span;
/// later, or on a retry, it is linked to it instead.
#[cfg(feature = "otel")]
pub const PARENT_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// The span of one enqueue on `queue`; its `messaging.message.id` is recorded once written.
pub(crate) fn send(queue: &str, task: &str) -> Span {
    tracing::info_span!(
        "pq.send",
        otel.name = format!("send {queue}"),
        otel.kind = "producer",
        messaging.system = SYSTEM,
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.destination.name = queue,
        messaging.message.id = Empty,
        pq.task = task,
    )
}

/// The span of one enqueue of `count` jobs, on `queue` if they share one.
pub(crate) fn send_batch(queue: Option<&str>, count: usize) -> Span {
    tracing::info_span!(
        "pq.send",
        otel.name = match queue {
            Some(queue) => format!("send {queue}"),
            None => "send".to_owned(),
        },
        otel.kind = "producer",
        messaging.system = SYSTEM,
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.destination.name = queue,
        messaging.batch.message_count = count,
    )
}

/// The span of one run of `job`, by its task `task`: a child of, or linked to, its enqueuer's
/// span with the `otel` feature.
pub(crate) fn process(job: &Job, task: &str) -> Span {
    // A root of its own: a run is not part of whatever span the worker runs in; its parent,
    // if any, is its enqueuer's.
    let span = tracing::info_span!(
        parent: None,
        "pq.process",
        otel.name = format!("process {}", job.queue()),
        otel.kind = "consumer",
        messaging.system = SYSTEM,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = job.queue(),
        messaging.message.id = job.id().0,
        pq.task = task,
        pq.attempt = job.attempts(),
    );
    #[cfg(feature = "otel")]
    otel::join(&span, job);
    span
}

/// `job`, carrying the trace context of `span` if it has one (with the `otel` feature).
pub(crate) fn carry(span: &Span, job: NewJob) -> NewJob {
    #[cfg(feature = "otel")]
    if let Some(context) = otel::Carried::of(span) {
        return context.into_job(job);
    }
    let _ = span;
    job
}

/// `jobs`, each carrying the trace context of `span` if it has one.
pub(crate) fn carry_all(span: &Span, jobs: Vec<NewJob>) -> Vec<NewJob> {
    #[cfg(feature = "otel")]
    if let Some(context) = otel::Carried::of(span) {
        return jobs
            .into_iter()
            .map(|job| context.clone().into_job(job))
            .collect();
    }
    let _ = span;
    jobs
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId};
    use pq_core::{Job, NewJob};
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// A span's trace context as W3C Trace Context headers, as the job's meta keeps them.
    #[derive(Clone)]
    pub(super) struct Carried {
        traceparent: String,
        tracestate: Option<String>,
    }

    #[derive(serde::Deserialize)]
    struct Meta<'a> {
        #[serde(borrow)]
        traceparent: Option<&'a str>,
        #[serde(borrow)]
        tracestate: Option<&'a str>,
    }

    impl Carried {
        /// The trace context of `span`, if an OpenTelemetry layer records it.
        pub(super) fn of(span: &Span) -> Option<Self> {
            if span.is_disabled() {
                return None;
            }
            let context = span.context();
            let span_context = context.span().span_context().clone();
            if !span_context.is_valid() {
                return None;
            }
            let state = span_context.trace_state().header();
            Some(Self {
                traceparent: format!(
                    "00-{}-{}-{:02x}",
                    span_context.trace_id(),
                    span_context.span_id(),
                    span_context.trace_flags().to_u8()
                ),
                tracestate: (!state.is_empty()).then_some(state),
            })
        }

        pub(super) fn into_job(self, job: NewJob) -> NewJob {
            let job = job.meta("traceparent", self.traceparent);
            match self.tracestate {
                Some(state) => job.meta("tracestate", state),
                None => job,
            }
        }
    }

    /// Makes `span` a child of the span that enqueued `job`, or links it to that span (see the
    /// module's documentation).
    pub(super) fn join(span: &Span, job: &Job) {
        if span.is_disabled() {
            return;
        }
        let Some(enqueuer) = job.meta().and_then(enqueuer) else {
            return;
        };
        let waited = (chrono::Utc::now() - job.enqueued_at()).to_std();
        let soon = waited.is_ok_and(|waited| waited <= super::PARENT_WITHIN);
        if job.attempts() <= 1 && soon {
            let parent = opentelemetry::Context::new().with_remote_span_context(enqueuer.clone());
            if span.set_parent(parent).is_ok() {
                return;
            }
        }
        span.add_link(enqueuer);
    }

    /// The enqueuer's span context, from the `traceparent` (and `tracestate`) of a job's meta:
    /// `00-<trace id>-<span id>-<flags>`. Anything else is no context.
    fn enqueuer(meta: &str) -> Option<SpanContext> {
        let meta: Meta<'_> = serde_json::from_str(meta).ok()?;
        let mut parts = meta.traceparent?.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || parts.next().is_some() || trace.len() != 32 || span.len() != 16 {
            return None;
        }
        let context = SpanContext::new(
            TraceId::from_hex(trace).ok()?,
            SpanId::from_hex(span).ok()?,
            TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
            true,
            meta.tracestate
                .and_then(|state| state.parse().ok())
                .unwrap_or_default(),
        );
        context.is_valid().then_some(context)
    }

    #[cfg(test)]
    mod tests {
        use super::enqueuer;

        #[test]
        fn a_traceparent_is_read_back_and_anything_else_is_no_context() {
            let meta = r#"{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","tracestate":"a=1"}"#;
            let context = enqueuer(meta).expect("a valid traceparent");
            assert_eq!(
                context.trace_id().to_string(),
                "0af7651916cd43dd8448eb211c80319c"
            );
            assert_eq!(context.span_id().to_string(), "b7ad6b7169203331");
            assert!(context.is_sampled() && context.is_remote());
            assert_eq!(context.trace_state().get("a"), Some("1"));
            for bad in [
                r#"{}"#,
                r#"{"traceparent":"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#,
                r#"{"traceparent":"00-00000000000000000000000000000000-b7ad6b7169203331-01"}"#,
                r#"{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331"}"#,
                r#"{"traceparent":"00-zz-b7ad6b7169203331-01"}"#,
                r#"{"traceparent":7}"#,
                "not json",
            ] {
                assert!(enqueuer(bad).is_none(), "{bad}");
            }
        }
    }
}
