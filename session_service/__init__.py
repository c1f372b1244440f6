"""Shared session store and HTTP session service for stateless PHP web nodes."""
