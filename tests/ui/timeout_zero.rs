#[pq::task(timeout = "0s")]
async fn never(_n: u32) {}

fn main() {}
