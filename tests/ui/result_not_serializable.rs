struct Thumbnail {
    width: u32,
}

#[pq::task]
async fn resize(width: u32) -> anyhow::Result<Thumbnail> {
    Ok(Thumbnail { width })
}

fn main() {}
