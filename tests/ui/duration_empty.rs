#[pq::task(expected_at = "")]
fn eat(kind: String) {
    println!("{kind}");
}

fn main() {}
