#[pq::task(queues = "apples")]
fn eat(kind: String) {
    println!("{kind}");
}

fn main() {}
