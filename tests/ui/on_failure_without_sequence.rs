#[pq::task(on_failure = "skip")]
async fn apply_entry(_account: i64) {}

fn main() {}
