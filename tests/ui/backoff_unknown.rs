#[pq::task(backoff = "linear")]
fn eat(kind: String) {
    println!("{kind}");
}

fn main() {}
