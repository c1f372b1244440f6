"""Stateless round-robin HTTP/TCP load balancer (see docs/balancer.md)."""
