#[pq::task]
async fn fetch(url: String) -> anyhow::Result<String> {
    Ok(url)
}

#[pq::task]
async fn count(#[parent] words: Vec<String>) -> anyhow::Result<usize> {
    Ok(words.len())
}

fn main() {
    let mut workflow = pq::Workflow::new();
    let page = workflow.add(fetch("https://example.com".into()));
    workflow.add(count(page)); // fetch gives a String, count takes a Vec<String>
}
