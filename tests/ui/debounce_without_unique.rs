#[pq::task(debounce = "30s")]
async fn reindex(_account: String) {}

fn main() {}
