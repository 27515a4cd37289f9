#[pq::task]
fn eat(kind: impl Into<String>) {
    println!("{}", kind.into());
}

fn main() {}
