#[pq::task]
async fn eat(kind: String, ctx: pq::TaskContext) {
    println!("{}: {kind}", ctx.job_id());
}

fn main() {}
