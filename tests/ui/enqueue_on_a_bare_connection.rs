// A bare connection names no table: it would write to whichever one its search path leads to.
#[pq::task]
async fn tally(n: i64) {}

async fn enqueue(pq: pq::Pq) {
    let mut tx = pq.pool().begin().await.unwrap();
    tally(1).enqueue(&mut *tx).await.unwrap();
    tally(2).enqueue(pq.pool()).await.unwrap();
}

fn main() {}
