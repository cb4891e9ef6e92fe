"""Storage of records: one SQLAlchemy table, SQLite by default, any SQLAlchemy URL."""

from bpfscope.storage.models import records
from bpfscope.storage.store import AGGREGATES, Store, StoreError

__all__ = ["AGGREGATES", "Store", "StoreError", "records"]
