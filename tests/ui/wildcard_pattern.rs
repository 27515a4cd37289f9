#[pq::task]
fn eat(_: String) {}

fn main() {}
