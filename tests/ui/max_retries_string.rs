#[pq::task(max_retries = "2")]
fn eat(kind: String) {
    println!("{kind}");
}

fn main() {}
