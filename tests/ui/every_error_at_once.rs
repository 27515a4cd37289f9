// Every mistake is reported in one go, and the function is still emitted unchanged: `main`
// calls it without a further error.
#[pq::task(queues = "apples", retry_in = "soon", max_retries = -2, retry_in = "1s")]
fn eat<T>(kind: &str, _: u32) {
    println!("{kind}");
}

fn main() {
    eat::<u8>("Cox", 3);
}
