"""Per-iteration engine overhead by serving-engine kind: the part of an engine step
that is not GPU kernel time (scheduling, input preparation, sampling, output handling
not overlapped with the GPU). A calibration from live step logs fits it per deployment
(`seersim calibrate cost` on an `iteration` table); these are the defaults."""

from __future__ import annotations

ENGINE_STEP_OVERHEAD_S: dict[str, float] = {
    # vLLM V1 (CUDA graphs, engine core in its own process, persistent batch): scheduling
    # and detokenisation overlap the GPU, so what remains per step is input preparation
    # and sampling, ~0.5 ms. Source: vLLM V1 blog (blog.vllm.ai/2025/01/27/v1-alpha-release,
    # "Optimized execution loop": GPU time ~5 ms per step for Llama-8B on H100, CPU work
    # overlapped), and issue 11's measurement of 6-7 ms per token for 7-8B models decoding
    # alone on H100, of which the fitted H100 kernel curves explain ~6.1-6.5 ms.
    "vllm-v1": 0.5e-3,
    # vLLM V0 (synchronous scheduler + detokenisation in the step loop): ~4 ms, the
    # overhead the V1 blog set out to remove (same source); seersim's earlier default.
    "vllm-v0": 4e-3,
}
