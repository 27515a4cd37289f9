#[pq::task(cron = "61 * * * *")]
async fn nightly(_ctx: pq::TaskContext) {}

fn main() {}
