"""Record profiling tables (`seersim-profile/1`): torch operator timings of a catalog
model at its TP-shard shapes (`seersim profile`), or iteration rows from live vLLM
step logs (written by the vLLM backend). Schema and I/O in `table.py`."""

from seersim.profile.table import COLUMNS, SCHEMA, ProfileTable, read_profile_table, write_profile_table

__all__ = ["COLUMNS", "SCHEMA", "ProfileTable", "read_profile_table", "write_profile_table"]
