"""Helpers for tests, benchmarks and the offline quickstart: a tiny model and a local S3 server."""
