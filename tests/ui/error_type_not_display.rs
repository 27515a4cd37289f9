struct Indigestion;

#[pq::task]
async fn eat(kind: String) -> Result<(), Indigestion> {
    println!("{kind}");
    Err(Indigestion)
}

fn main() {}
