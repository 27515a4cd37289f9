#[pq::task(timezone = "Europe/Berlin", on_missed = "skip")]
async fn nightly(_ctx: pq::TaskContext) {}

fn main() {}
