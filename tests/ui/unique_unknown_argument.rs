#[pq::task(unique = [user_id])]
async fn welcome(_ctx: pq::TaskContext, user: i64, address: String) {
    let _ = (user, address);
}

fn main() {}
