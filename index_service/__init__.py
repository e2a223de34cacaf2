"""The index: the only owner of storage, vectors in Milvus and metadata in SQL."""
