"""Code shared by the three services and the CLI.

Only what is truly shared lives here: the generated protobuf package
(`imagesearch.v1`), settings helpers, logging, content ids and the gRPC
server/client boilerplate. Nothing here imports torch, pymilvus or SQLAlchemy.
"""
