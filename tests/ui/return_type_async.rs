#[pq::task]
async fn eat(kind: String) -> u32 {
    kind.len() as u32
}

fn main() {}
