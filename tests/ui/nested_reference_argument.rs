#[pq::task]
fn eat(kinds: Vec<&'static str>) {
    println!("{kinds:?}");
}

fn main() {}
