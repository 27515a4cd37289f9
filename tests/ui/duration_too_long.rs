#[pq::task(retry_in = "2000y")]
fn eat(kind: String) {
    println!("{kind}");
}

fn main() {}
