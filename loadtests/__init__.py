"""Load and fault runs of the whole stack (locust scenarios, make chaos)."""
