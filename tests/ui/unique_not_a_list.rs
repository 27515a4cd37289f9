#[pq::task(unique = "user")]
async fn welcome(_user: i64) {}

fn main() {}
