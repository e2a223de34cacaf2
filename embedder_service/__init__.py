"""The embedder: image bytes in, L2-normalised vectors out (torch, batching, CPU or GPU)."""
