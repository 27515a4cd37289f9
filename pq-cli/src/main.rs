//! The standalone `pq` tool. It registers no task: `enqueue` only checks that the arguments are
//! a JSON object, and `work` is for an application's own binary that calls `pq_cli::main()`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    pq_cli::main().await
}
