"""GPU catalog (datasheet values; cited per field)."""

from __future__ import annotations

from seersim.specs.gpu import GPUSpec

GB = 1e9
TB = 1e12

_H100_SHEET = "https://www.nvidia.com/en-us/data-center/h100/ (H100 SXM datasheet)"
_A100_SHEET = "https://www.nvidia.com/en-us/data-center/a100/ (A100 80GB SXM datasheet)"
_H200_SHEET = "https://www.nvidia.com/en-us/data-center/h200/ (H200 SXM datasheet)"
_EFFICIENCY = (
    "assumed defaults, to be fitted by calibration: ~50% MFU for serving GEMMs and ~70% "
    "HBM bandwidth in decode are typical of vLLM on Hopper (Vidur MLSys'24 profiles; "
    "DESIGN §5 'roofline realism')"
)
_CAL_H100 = ("h100: GEMM curves fitted on Vidur's H100 tables, attention on seersim's own H100 tables "
             "(seersim/cost/calibrations/h100.yaml)")
_PRICES = (
    "https://www.mercatus-ai.com/blog/cloud-gpu-pricing (May 2026 on-demand $/GPU-hour, specialty clouds: "
    "A100 80GB $1.10-1.50, H100 SXM $2.50-3.50, H200 SXM $3.50-4.50; hyperscalers charge more)"
)

GPUS: dict[str, GPUSpec] = {
    g.name: g
    for g in [
        GPUSpec(
            name="h100-sxm",
            memory_bytes=80 * GB,
            hbm_bandwidth_bytes_per_s=3.35 * TB,
            peak_flops=989e12,
            nvlink_bandwidth_bytes_per_s=450 * GB,
            calibration="h100",
            gpu_hour_usd=2.5,
            sources={
                "calibration": _CAL_H100,
                "memory/hbm/flops": _H100_SHEET + ": 80 GB HBM3, 3.35 TB/s, 989 TFLOPS bf16 dense",
                "nvlink": _H100_SHEET + ": NVLink 900 GB/s bidirectional = 450 GB/s per direction",
                "efficiency": _EFFICIENCY,
                "gpu_hour_usd": "low end of the specialty-cloud H100 SXM range; edit per contract. " + _PRICES,
            },
        ),
        GPUSpec(
            name="h800",
            memory_bytes=80 * GB,
            hbm_bandwidth_bytes_per_s=3.35 * TB,
            peak_flops=989e12,
            nvlink_bandwidth_bytes_per_s=200 * GB,
            calibration="h100",
            gpu_hour_usd=2.5,
            sources={
                "calibration": "H100's curves: the H800 has the H100 SXM's compute and HBM (no public H800 tables); "
                + _CAL_H100,
                "memory/hbm/flops": "H800 SXM = H100 SXM compute and HBM (DESIGN §5); " + _H100_SHEET,
                "nvlink": "H800 NVLink 400 GB/s bidirectional (export variant) = 200 GB/s per direction",
                "scaleout": "Seer paper setup: 8 x 400 Gbps RDMA per node = 50 GB/s per GPU",
                "efficiency": _EFFICIENCY,
                "gpu_hour_usd": "assumed equal to H100 SXM (H800 is not rented on the clouds surveyed). " + _PRICES,
            },
        ),
        GPUSpec(
            name="h200",
            memory_bytes=141 * GB,
            hbm_bandwidth_bytes_per_s=4.8 * TB,
            peak_flops=989e12,
            nvlink_bandwidth_bytes_per_s=450 * GB,
            calibration="h100",
            gpu_hour_usd=3.5,
            sources={
                "calibration": "H100's efficiency fractions applied to the H200's peaks (same Hopper die, faster HBM); "
                "checked on whole decode steps timed on an H200 (traces/h200-*-decode-steps.csv): MAPE 10-12%, "
                "0.83-1.12x; " + _CAL_H100,
                "memory/hbm/flops": _H200_SHEET + ": 141 GB HBM3e, 4.8 TB/s, 989 TFLOPS bf16 dense",
                "nvlink": _H200_SHEET + ": NVLink 900 GB/s bidirectional",
                "efficiency": _EFFICIENCY,
                "gpu_hour_usd": "low end of the specialty-cloud H200 SXM range. " + _PRICES,
            },
        ),
        GPUSpec(
            name="a100-80gb",
            memory_bytes=80 * GB,
            hbm_bandwidth_bytes_per_s=2.039 * TB,
            peak_flops=312e12,
            nvlink_bandwidth_bytes_per_s=300 * GB,
            scaleout_bandwidth_bytes_per_s=25 * GB,
            flops_efficiency=0.55,
            calibration="a100",
            gpu_hour_usd=1.5,
            sources={
                "calibration": "a100: kernel curves fitted on Vidur's A100 tables (seersim/cost/calibrations/a100.yaml)",
                "memory/hbm/flops": _A100_SHEET + ": 80 GB HBM2e, 2,039 GB/s, 312 TFLOPS bf16 dense",
                "nvlink": _A100_SHEET + ": NVLink 600 GB/s bidirectional",
                "scaleout": "assumed 200 Gbps HDR InfiniBand per GPU (DGX A100)",
                "efficiency": _EFFICIENCY,
                "gpu_hour_usd": "high end of the specialty-cloud A100 80GB range. " + _PRICES,
            },
        ),
    ]
}
