//! The standalone `pq` tool. It registers no task: `enqueue` only checks that the arguments are
//! a JSON object, and `work` is for an application's own binary that calls `pq_cli::run()`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match pq_cli::run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pq: {error:#}");
            ExitCode::FAILURE
        }
    }
}
