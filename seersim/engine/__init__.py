"""The simulated backend: instances (batching, KV, fast-forward), KV-capacity planning,
the global KV pool, speculative decoding, and `SimBackend`, which wires them together
behind the driver's `Backend` protocol."""

from seersim.engine.cluster import SimBackend
from seersim.engine.instance import Instance
from seersim.engine.kvcache import KVCache
from seersim.engine.kvpool import KVPool
from seersim.engine.memory import kv_capacity_blocks

__all__ = ["SimBackend", "Instance", "KVCache", "KVPool", "kv_capacity_blocks"]
