#[pq::task]
fn eat(kind: String) -> impl Sized {
    kind
}

fn main() {}
