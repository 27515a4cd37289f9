#[pq::task]
fn eat(kind: &str) {
    println!("{kind}");
}

fn main() {}
