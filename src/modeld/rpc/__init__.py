"""The gRPC front: listener, security (TLS, bearer tokens), interceptors (gate, errors, request
ids), the servicer that only translates messages, and the message <-> domain conversion."""
