#[pq::task(name = "")]
fn eat(kind: String) {
    println!("{kind}");
}

fn main() {}
