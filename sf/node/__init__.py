"""Running one node: server start/stop in order, local services for `sf dev`, TLS helper."""
