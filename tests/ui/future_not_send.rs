use std::rc::Rc;

#[pq::task]
async fn eat(kind: String) {
    let shared = Rc::new(kind);
    tokio::task::yield_now().await;
    println!("{shared}");
}

fn main() {}
