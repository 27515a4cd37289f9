#[pq::task(schedule_at = "-5s")]
fn eat(kind: String) {
    println!("{kind}");
}

fn main() {}
