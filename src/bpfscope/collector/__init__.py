"""The collector service: receives record batches over HTTP, stores them, serves queries."""

from bpfscope.collector.app import create_app

__all__ = ["create_app"]
