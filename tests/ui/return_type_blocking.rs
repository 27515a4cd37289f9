#[pq::task]
fn eat(kind: String) -> Option<()> {
    kind.is_empty().then_some(())
}

fn main() {}
