//! Metrics identical to the official scorers (pycocoevalcap, the VQA evaluator), in Rust.
