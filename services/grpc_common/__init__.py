"""gRPC plumbing shared by the four stage services: the job servicer base, the server builder
(health, reflection, interceptors, TLS), the client base and `sigdl serve`."""
