//! One module per subcommand.

pub mod adapter;
pub mod clip;
pub mod demo;
pub mod embed;
pub mod eval;
pub mod experiment;
pub mod import;
pub mod infer;
pub mod predict;
pub mod score;
pub mod serve;
pub mod train;
pub mod world;
