#[pq::task(rate = "10/fortnight")]
async fn report() {}

fn main() {}
