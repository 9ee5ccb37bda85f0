//! CLIP on candle: HF checkpoints, exact preprocessing, training from scratch, embedding cache.
