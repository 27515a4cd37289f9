#[pq::task(unique = [account], debounce = "30s", on_conflict = "replace")]
async fn reindex(account: String) {
    let _ = account;
}

fn main() {}
