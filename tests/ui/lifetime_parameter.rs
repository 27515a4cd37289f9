#[pq::task]
fn eat<'a>(kind: std::borrow::Cow<'a, str>) {
    println!("{kind}");
}

fn main() {}
