#[pq::task(cron = "@daily", on_missed = "later")]
async fn nightly(_ctx: pq::TaskContext) {}

fn main() {}
