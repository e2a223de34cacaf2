"""Training and evaluation, apart from serving: nothing here is installed or
shipped in an image; the serving packages never import it."""
