#[pq::task(limit_key = [_customer])]
async fn send_sms(_customer: i64) {}

fn main() {}
