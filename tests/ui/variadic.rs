#[pq::task]
fn eat(count: u32, _more: ...) {
    println!("{count}");
}

fn main() {}
