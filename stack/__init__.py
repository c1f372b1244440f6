"""Run the whole stack locally: the demo, the load test and the end-to-end tests."""
