"""Execution side of the simulator: instances (batching, KV, fast-forward), the global
KV pool, speculative decoding, and the cluster that drives them with a policy."""

from seersim.engine.cluster import Cluster, SimOutput, kv_capacity_blocks
from seersim.engine.instance import Instance
from seersim.engine.kvcache import KVCache
from seersim.engine.kvpool import KVPool

__all__ = ["Cluster", "SimOutput", "Instance", "KVCache", "KVPool", "kv_capacity_blocks"]
