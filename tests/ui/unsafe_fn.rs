#[pq::task]
unsafe fn eat(kind: String) {
    println!("{kind}");
}

fn main() {}
