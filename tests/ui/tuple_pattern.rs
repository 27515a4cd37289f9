#[pq::task]
fn eat((kind, count): (String, u32)) {
    println!("{count} {kind}");
}

fn main() {}
