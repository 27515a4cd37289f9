//! Compile-time behaviour of `#[pq::task]`: what compiles (`pass_*.rs`) and the exact error for
//! each misuse (one per `*.rs` file, its message pinned in the `.stderr` beside it).
//!
//! Regenerate the messages with `TRYBUILD=overwrite cargo test --test ui`, then review the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass_*.rs");
    t.compile_fail("tests/ui/[!p]*.rs");
}
