"""The one table of the collector: `records`, a row per record of schema v1.

JSON columns hold the free-form parts (labels, values, stack); the indexes follow the
filters the query API offers, newest-first by ts within each.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

records = Table(
    "records",
    metadata,
    # INTEGER PRIMARY KEY on SQLite is the rowid (no extra index); BIGINT identity elsewhere.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("ts", BigInteger, nullable=False),
    Column("host", String(255), nullable=False),
    Column("domain", String(16), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("pid", BigInteger),
    Column("tid", BigInteger),
    Column("comm", Text),
    Column("labels", JSON, nullable=False),
    Column("values", JSON, nullable=False),
    # none_as_null: a record without a stack stores SQL NULL, not the JSON text 'null'.
    Column("stack", JSON(none_as_null=True)),
    Index("ix_records_domain_kind_ts", "domain", "kind", "ts"),
    Index("ix_records_pid_ts", "pid", "ts"),
    Index("ix_records_host_ts", "host", "ts"),
    Index("ix_records_comm_ts", "comm", "ts"),
    Index("ix_records_ts", "ts"),
)

# Column order of a stored row, as the fast insert path and the benchmarks use it.
RECORD_COLUMNS = ("ts", "host", "domain", "kind", "pid", "tid", "comm", "labels", "values", "stack")
