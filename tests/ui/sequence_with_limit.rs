#[pq::task(sequence = [_account], limit = 2)]
async fn apply_entry(_account: i64) {}

fn main() {}
