"""Record profiling tables (`seersim-profile/1`, `schema.py`): torch operator timings
of a catalog model at its TP-shard shapes (`seersim profile`: `torch_ops.py` plans the
shapes, `torch_runner.py` times them, also standalone on a GPU machine with torch
only), or iteration rows from live vLLM step logs (`vllm.py`, `steplog.py`). Reading
tables: `table.py`.

Nothing is imported here, so that `python -m seersim.profile.torch_runner` needs
torch and the standard library only.
"""
