"""The ``imgsearch`` command-line client (and ``imgsearch up``, which runs the
stack). Talks to the gateway only; imports no torch, pymilvus or SQLAlchemy."""
