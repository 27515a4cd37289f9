#[pq::task(queue = apples)]
fn eat(kind: String) {
    println!("{kind}");
}

fn main() {}
