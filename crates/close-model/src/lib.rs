//! The CLOSE model (Gu, Clark & Kembhavi, ICCV 2023): CLIP vector → adapter → prefix → T5.

pub mod adapter;
pub mod embeddings;
pub mod linalg;
