#[pq::task(cron = "0 3 * * *", timezone = "Europe/Berlinn")]
async fn nightly(_ctx: pq::TaskContext) {}

fn main() {}
