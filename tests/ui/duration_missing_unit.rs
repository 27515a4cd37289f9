#[pq::task(retry_in = "10")]
fn eat(kind: String) {
    println!("{kind}");
}

fn main() {}
