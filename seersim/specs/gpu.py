"""GPU spec: datasheet figures plus the achieved fractions a real engine reaches.

A pure roofline is optimistic for real engines (DESIGN §5), so the spec carries
achieved fractions of peak FLOPs and HBM bandwidth for the `roofline` cost model (each
default names its source) and the name of the kernel-curves calibration that the
`calibrated` model (the default) uses; the per-iteration overhead belongs to the
serving engine (seersim/cost/overhead.py).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from seersim.fields import Bytes, BytesPerS, Count, Flops, Fraction, Seconds, Usd


class GPUSpec(BaseModel):
    """One GPU type (per device figures, bf16 dense)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    memory_bytes: Bytes
    hbm_bandwidth_bytes_per_s: BytesPerS
    peak_flops: Flops = Field(description="dense bf16 FLOP/s (no sparsity)")
    nvlink_bandwidth_bytes_per_s: BytesPerS = Field(description="per GPU, one direction")
    scaleout_bandwidth_bytes_per_s: BytesPerS = Field(
        50e9, description="per GPU NIC, one direction (400 Gbps RDMA = 50 GB/s)"
    )
    gpus_per_node: Count = Field(8, le=4096)
    # Achieved fractions for the roofline cost model: assumptions; the calibrated model fits them.
    flops_efficiency: Fraction = Field(0.5, description="achieved / peak FLOP/s (GEMMs in serving)")
    bandwidth_efficiency: Fraction = Field(0.7, description="achieved / peak HBM bandwidth in decode")
    collective_latency_s: Seconds = Field(10e-6, description="fixed latency of one collective")
    calibration: str | None = Field(
        None, description="shipped kernel-curves calibration (seersim/cost/calibrations/NAME.yaml) for cost.model calibrated"
    )
    gpu_hour_usd: Usd = Field(2.0, description="price of one GPU-hour, for cost reports")
    sources: dict[str, str] = Field(default_factory=dict)
