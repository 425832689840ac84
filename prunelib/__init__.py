"""prunelib: sensitivity-aware one-shot pruning of Whisper, measured honestly."""
