struct Basket;

impl Basket {
    #[pq::task]
    fn eat(&self, kind: String) {
        println!("{kind}");
    }
}

fn main() {}
