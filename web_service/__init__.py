"""The HTTP face: seed 001's HTTP API, a JSON API under /v1 and the web page,
on FastAPI. A client of the gateway only (``imagesearch.client``): no torch,
Milvus or SQL here, so it runs and scales on its own."""
