#[pq::task]
extern "C" fn eat(count: u32) {
    println!("{count}");
}

fn main() {}
