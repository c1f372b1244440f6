"""The HTTP session service: FastAPI app, wire codec, auth, lock waiting, metrics."""
