//! The CLOSE model (Gu, Clark & Kembhavi, ICCV 2023): CLIP vector → adapter → prefix → T5.

pub mod adapter;
pub mod config;
pub mod embeddings;
pub mod eval;
pub mod hub;
pub mod import;
pub mod linalg;
pub mod model;
pub mod plot;
pub mod run;
pub mod schedule;
pub mod task;
pub mod train;
