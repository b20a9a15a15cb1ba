//! Examples for msgi: run one with `cargo run -p msgi-examples --example NAME`.
