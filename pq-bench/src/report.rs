//! The one table the benchmark prints, in Markdown so that it pastes into BENCHMARKS.md.

use std::fmt::Write;

use crate::measure::{Measured, TableState};

/// One line of the table: a pq figure beside the raw SQL that bounds it.
pub struct Row {
    pub figure: String,
    pub pq: Measured,
    /// The baseline's name and figure.
    pub raw: (String, Measured),
}

pub struct Report {
    pub rows: Vec<Row>,
    pub latency: Option<Latency>,
    pub tables: Vec<(String, TableState)>,
    pub notes: Vec<String>,
}

/// Enqueue-to-handler-start latency, in milliseconds.
pub struct Latency {
    pub samples: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    /// From latencies sorted in increasing order.
    pub fn of(sorted: &[f64]) -> Option<Latency> {
        let at =
            |q: f64| sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1];
        (!sorted.is_empty()).then(|| Latency {
            samples: sorted.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        })
    }
}

impl Report {
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "| figure | pq jobs/s | raw SQL baseline | raw jobs/s | pq / raw | WAL B/job pq · raw | commits/job pq · raw | write commits/job pq · raw |\n\
             |---|---:|---|---:|---:|---:|---:|---:|\n",
        );
        for row in &self.rows {
            let pq = &row.pq;
            let (baseline, raw) = (&row.raw.0, &row.raw.1);
            let raw_rate = rate(raw.rate());
            let ratio = format!("{:.0}%", 100.0 * pq.rate() / raw.rate());
            let wal = format!("{:.0} · {:.0}", pq.wal_per_job(), raw.wal_per_job());
            let commits = format!("{:.3} · {:.3}", pq.commits_per_job(), raw.commits_per_job());
            let writes = format!(
                "{:.3} · {:.3}",
                pq.write_commits_per_job(),
                raw.write_commits_per_job()
            );
            let _ = writeln!(
                out,
                "| {} | {} | {baseline} | {raw_rate} | {ratio} | {wal} | {commits} | {writes} |",
                row.figure,
                rate(pq.rate()),
            );
        }
        if let Some(latency) = &self.latency {
            let _ = writeln!(
                out,
                "| latency enqueue → handler start, idle worker ({} jobs) | p50 {:.2} ms · p99 {:.2} ms · max {:.2} ms | | | | | | |",
                latency.samples, latency.p50, latency.p99, latency.max
            );
        }
        if !self.tables.is_empty() {
            out.push_str("\n| table after | rows | table size | index size | dead tuples | vacuums so far |\n|---|---:|---:|---:|---:|---:|\n");
            for (name, state) in &self.tables {
                let _ = writeln!(
                    out,
                    "| {name} | {} | {} | {} | {} | {} |",
                    state.rows,
                    size(state.table_bytes),
                    size(state.index_bytes),
                    state.dead_tuples,
                    state.vacuums
                );
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "\n{note}");
        }
        out
    }
}

fn rate(jobs_per_second: f64) -> String {
    if jobs_per_second >= 10_000.0 {
        format!("{:.1}k", jobs_per_second / 1e3)
    } else {
        format!("{jobs_per_second:.0}")
    }
}

fn size(bytes: i64) -> String {
    let bytes = bytes as f64;
    if bytes >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
    } else {
        format!("{:.0} KiB", bytes / 1024.0)
    }
}
