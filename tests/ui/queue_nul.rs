#[pq::task(queue = "apples\0pears")]
fn eat(kind: String) {
    println!("{kind}");
}

fn main() {}
