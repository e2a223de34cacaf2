"""Text in the embedder: a sentence encoder (all-MiniLM-L6-v2, our own BERT
and WordPiece over the weights a pinned package ships) and the text heads of
the image families that can search by words."""
