#[pq::task]
struct Eat;

fn main() {}
