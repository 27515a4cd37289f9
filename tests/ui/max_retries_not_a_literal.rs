const RETRIES: u32 = 3;

#[pq::task(max_retries = RETRIES)]
fn eat(kind: String) {
    println!("{kind}");
}

fn main() {}
