#[pq::task(unique = [account], debounce = "5m", debounce_max = "30s")]
async fn reindex(account: String) {
    let _ = account;
}

fn main() {}
