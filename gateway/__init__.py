"""The gateway: the public API, folder jobs, and the calls into the embedder and the index."""
