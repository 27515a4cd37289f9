//! Placeholder: the benchmark binary is being written.
fn main() {}
