"""Generated protobuf and gRPC stubs for imagesearch.v1 (``make proto``). Do not edit."""
