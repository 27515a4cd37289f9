#[pq::task(cron = "*/5 * * * *")]
async fn refresh(region: String) {
    let _ = region;
}

fn main() {}
