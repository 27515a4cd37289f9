#[pq::task(limit_key = [customr], limit = 1)]
async fn send_sms(_customer: i64, _text: String) {}

fn main() {}
