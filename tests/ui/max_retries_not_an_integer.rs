#[pq::task(max_retries = 1.5)]
fn eat(kind: String) {
    println!("{kind}");
}

fn main() {}
