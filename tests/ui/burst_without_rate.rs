#[pq::task(burst = 5)]
async fn report() {}

fn main() {}
