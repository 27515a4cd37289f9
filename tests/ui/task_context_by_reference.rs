#[pq::task]
async fn eat(ctx: &pq::TaskContext, kind: String) {
    println!("{}: {kind}", ctx.job_id());
}

fn main() {}
