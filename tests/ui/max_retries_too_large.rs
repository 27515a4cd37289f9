#[pq::task(max_retries = 5_000_000_000)]
fn eat(kind: String) {
    println!("{kind}");
}

fn main() {}
