#[pq::task(queue = "apples", max_retries = 2, queue = "pears")]
fn eat(kind: String) {
    println!("{kind}");
}

fn main() {}
