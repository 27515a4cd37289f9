#[pq::task]
fn eat<T: std::fmt::Display>(item: T) {
    println!("{item}");
}

fn main() {}
