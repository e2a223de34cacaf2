"""Tools for developers and CI: the docs pages made from the tree, the code-shape check, the test Milvus server, the chaos run."""
