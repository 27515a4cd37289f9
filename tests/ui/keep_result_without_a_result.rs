#[pq::task(keep_result = "7d")]
async fn clean(table: String) -> anyhow::Result<()> {
    println!("{table}");
    Ok(())
}

fn main() {}
