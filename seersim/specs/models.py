"""Model catalog: values from each model's published config.json (cited per model).

Parameter counts are derived (see ModelSpec); tests compare them with the model cards.
"""

from __future__ import annotations

from seersim.specs.model import ModelSpec

_HF = "https://huggingface.co/{repo}/blob/main/config.json"

MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in [
        ModelSpec(
            name="moonlight-16b-a3b",
            num_layers=27,
            hidden_size=2048,
            intermediate_size=11264,
            num_attention_heads=16,
            num_kv_heads=16,
            head_dim=128,
            vocab_size=163840,
            attention="mla",
            kv_lora_rank=512,
            q_lora_rank=0,
            qk_rope_head_dim=64,
            qk_nope_head_dim=128,
            v_head_dim=128,
            num_experts=64,
            experts_per_token=6,
            num_shared_experts=2,
            moe_intermediate_size=1408,
            num_dense_layers=1,
            sources={
                "architecture": _HF.format(repo="moonshotai/Moonlight-16B-A3B")
                + " (deepseek_v3: first_k_dense_replace=1, q_lora_rank=null)",
                "params": "model card: 16B total, 3B activated; Seer Table: 32 GB weights (bf16)",
            },
        ),
        ModelSpec(
            name="qwen2-vl-72b",
            num_layers=80,
            hidden_size=8192,
            intermediate_size=29568,
            num_attention_heads=64,
            num_kv_heads=8,
            head_dim=128,
            vocab_size=152064,
            sources={
                "architecture": _HF.format(repo="Qwen/Qwen2-VL-72B-Instruct") + " (LLM part; vision tower not modelled)",
                "params": "model card: 72B (73.4B with vision); Seer Table: 146 GB weights",
            },
        ),
        ModelSpec(
            name="kimi-k2",
            num_layers=61,
            hidden_size=7168,
            intermediate_size=18432,
            num_attention_heads=64,
            num_kv_heads=64,
            head_dim=128,
            vocab_size=163840,
            attention="mla",
            kv_lora_rank=512,
            q_lora_rank=1536,
            qk_rope_head_dim=64,
            qk_nope_head_dim=128,
            v_head_dim=128,
            num_experts=384,
            experts_per_token=8,
            num_shared_experts=1,
            moe_intermediate_size=2048,
            num_dense_layers=1,
            weight_bytes_per_param=1.0,
            sources={
                "architecture": _HF.format(repo="moonshotai/Kimi-K2-Instruct") + " (kimi_k2 = deepseek_v3 arch)",
                "weight_bytes_per_param": "checkpoint ships fp8 block-quantised weights (quantization_config), its embedding, lm_head and MoE router in bf16 (ModelSpec.unquantized_params); Seer: 1 TB",
                "params": "model card: 1T total, 32B activated",
            },
        ),
        ModelSpec(
            name="qwen2.5-7b",
            num_layers=28,
            hidden_size=3584,
            intermediate_size=18944,
            num_attention_heads=28,
            num_kv_heads=4,
            head_dim=128,
            vocab_size=152064,
            sources={
                "architecture": _HF.format(repo="Qwen/Qwen2.5-7B-Instruct"),
                "params": "model card: 7.61B",
            },
        ),
        ModelSpec(
            name="llama-2-7b",  # the model of Vidur's public tables and ../shared/bench
            num_layers=32,
            hidden_size=4096,
            intermediate_size=11008,
            num_attention_heads=32,
            num_kv_heads=32,
            head_dim=128,
            vocab_size=32000,
            sources={
                "architecture": _HF.format(repo="meta-llama/Llama-2-7b-hf"),
                "params": "model card: 7B (6.74B)",
            },
        ),
        ModelSpec(
            name="llama-3.1-8b",
            num_layers=32,
            hidden_size=4096,
            intermediate_size=14336,
            num_attention_heads=32,
            num_kv_heads=8,
            head_dim=128,
            vocab_size=128256,
            sources={
                "architecture": _HF.format(repo="meta-llama/Llama-3.1-8B-Instruct"),
                "params": "model card: 8B (8.03B)",
            },
        ),
    ]
}
