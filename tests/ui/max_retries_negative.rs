#[pq::task(max_retries = -1)]
fn eat(kind: String) {
    println!("{kind}");
}

fn main() {}
