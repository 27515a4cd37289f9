//! Worker metrics for Prometheus: jobs started, succeeded, retried and failed by task and
//! queue, run time and queue latency, served in the text format at
//! `http://127.0.0.1:9000/metrics`.
//!
//! Run with `cargo run --example metrics` (PostgreSQL at `DATABASE_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test`), then `curl -s 127.0.0.1:9000/metrics`; Ctrl-C
//! stops it.
//!
//! pq records through the `metrics` facade and the program picks the exporter: here
//! `metrics-exporter-prometheus` without its own HTTP server, scraped through a few lines of
//! tokio. A service that has an HTTP server mounts `handle.render()` on a route of its own.

use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Eats apples, slowly; Bramleys fail (they are cooking apples), once retried, then for good.
#[pq::task(queue = "apples", max_retries = 1, retry_in = "1s")]
async fn eat(kind: String) -> anyhow::Result<()> {
    tokio::time::sleep(Duration::from_millis(50)).await;
    if kind == "Bramley" {
        anyhow::bail!("{kind} is too sour to eat raw");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Histograms with buckets (rather than summaries) can be added up across workers.
    let metrics = PrometheusBuilder::new()
        .set_buckets(&[0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0])?
        .install_recorder()?;
    pq::metrics::describe();
    let address = std::env::var("METRICS_ADDR").unwrap_or_else(|_| "127.0.0.1:9000".to_owned());
    let listener = TcpListener::bind(&address).await?;
    println!("metrics at http://{address}/metrics; Ctrl-C to stop");
    tokio::spawn(serve(listener, metrics));

    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let pq = pq::Pq::builder()
        .schema("pq_example_metrics")
        .connect(&url)
        .await?;
    pq.create().await?;
    for kind in ["Cox", "Gala", "Bramley", "Fuji"] {
        eat(kind.to_owned()).enqueue(&pq).await?;
    }

    // Until SIGINT or SIGTERM.
    pq::Worker::new(pq).run().await?;
    Ok(())
}

/// Answers every connection with the current metrics, whatever it asked.
async fn serve(listener: TcpListener, metrics: PrometheusHandle) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut request = [0; 4096];
            let _ = stream.read(&mut request).await;
            // Without the exporter's own server, its upkeep (histogram aging) runs here.
            metrics.run_upkeep();
            let body = metrics.render();
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
