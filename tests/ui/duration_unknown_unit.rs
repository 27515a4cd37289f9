#[pq::task(retry_in = "10x")]
fn eat(kind: String) {
    println!("{kind}");
}

fn main() {}
