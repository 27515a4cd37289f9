#[pq::task]
async fn sum(#[parents] total: u64) -> anyhow::Result<u64> {
    Ok(total)
}

fn main() {}
