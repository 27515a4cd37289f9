#[pq::task(queue)]
fn eat(kind: String) {
    println!("{kind}");
}

fn main() {}
