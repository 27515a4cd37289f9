#[pq::task(limit = 0)]
async fn report() {}

fn main() {}
