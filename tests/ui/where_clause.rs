#[pq::task]
fn eat(kind: String)
where
    String: Clone,
{
    println!("{kind}");
}

fn main() {}
