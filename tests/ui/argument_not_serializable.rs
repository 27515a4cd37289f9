struct Apple;

#[pq::task]
fn eat(apple: Apple) {
    let Apple = apple;
}

fn main() {}
