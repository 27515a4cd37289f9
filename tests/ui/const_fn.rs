#[pq::task]
const fn eat(count: u32) -> u32 {
    count + 1
}

fn main() {}
