"""A fused split-KV decode kernel for MLA's absorbed form, in Triton, for the profiler.

Why it exists: torch has no MLA decode kernel. Its SDPA, given the 576-wide latent as
both key and value, reads the latent twice and runs at a third of HBM bandwidth, so the
MLA rows it times say nothing about what a serving engine's kernel (FlashMLA, or the
Triton kernels vLLM and SGLang fall back to) costs. This kernel does what those do:
every query row of a sequence (heads × verify width, all sharing the one latent head)
is tiled against the latent once per piece of context; scores are the 512 latent plus
64 rotary columns; the values are the latent's first 512 columns, read from the same
tile; and the pieces' partial results are combined by their log-sum-exp. It is our
own, tuned only by Triton's autotuner over a few tile shapes: a floor on what a
hand-written kernel reaches, not FlashMLA's figure.

Needs torch and triton (on CUDA; `TRITON_INTERPRET=1` runs it on a CPU for tests).
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

# (rows, context tokens) per tile, warps, pipeline stages: the autotuner keeps the fastest
# per count of query rows, on the first shape it meets with them (`tune` offers one)
_CONFIGS = [
    triton.Config({"BLOCK_R": r, "BLOCK_N": n}, num_warps=w, num_stages=s)
    for r, n, w, s in ((16, 64, 4, 2), (32, 32, 4, 2), (64, 32, 8, 2), (64, 16, 4, 2), (64, 64, 8, 1))
]


@triton.jit
def _piece_kernel(
    q_ptr, kv_ptr, out_ptr, lse_ptr,
    rows, context, piece_tokens, scale,
    stride_qb, stride_qr, stride_kvb, stride_kvn, stride_ob, stride_op, stride_or, stride_lb, stride_lp,
    LORA: tl.constexpr, ROPE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One (sequence, block of query rows, piece of context): the piece's normalised
    output and its log-sum-exp."""
    b = tl.program_id(0).to(tl.int64)  # (a batch of 128 × 32K tokens × 576 columns is past 2^31 elements)
    rb = tl.program_id(1)
    piece = tl.program_id(2)
    r = rb * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = r < rows
    d_lora = tl.arange(0, LORA)
    d_rope = tl.arange(0, ROPE)
    q_row = q_ptr + b * stride_qb + r[:, None] * stride_qr
    q_lora = tl.load(q_row + d_lora[None, :], mask=r_ok[:, None], other=0.0)
    q_rope = tl.load(q_row + LORA + d_rope[None, :], mask=r_ok[:, None], other=0.0)
    start = piece * piece_tokens
    end = tl.minimum(start + piece_tokens, context)
    m = tl.full([BLOCK_R], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, LORA], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < end
        kv_tok = kv_ptr + b * stride_kvb + n[:, None] * stride_kvn
        latent = tl.load(kv_tok + d_lora[None, :], mask=n_ok[:, None], other=0.0)  # [N, LORA]: keys and values
        rope = tl.load(kv_tok + LORA + d_rope[None, :], mask=n_ok[:, None], other=0.0)
        s = tl.dot(q_lora, tl.trans(latent)) + tl.dot(q_rope, tl.trans(rope))
        s = tl.where(n_ok[None, :], s * scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m - m_new)
        total = total * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(latent.dtype), latent)
        m = m_new
    out = out_ptr + b * stride_ob + piece * stride_op + r[:, None] * stride_or + d_lora[None, :]
    tl.store(out, acc / total[:, None], mask=r_ok[:, None])
    tl.store(lse_ptr + b * stride_lb + piece * stride_lp + r, m + tl.log(total), mask=r_ok)


# (Triton's interpreter, which runs the kernels on a CPU in the tests, cannot autotune)
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
_tuned_piece_kernel = _piece_kernel if _INTERPRETED else triton.autotune(configs=_CONFIGS, key=["rows"])(_piece_kernel)


@triton.jit
def _combine_kernel(
    part_ptr, lse_ptr, out_ptr, pieces,
    stride_pb, stride_pp, stride_pr, stride_lb, stride_lp, stride_ob, stride_or,
    LORA: tl.constexpr, PIECES: tl.constexpr,
):
    """One (sequence, query row): the pieces' outputs weighted by their share of the
    softmax mass (FlashDecoding's reduction)."""
    b = tl.program_id(0).to(tl.int64)
    r = tl.program_id(1)
    p = tl.arange(0, PIECES)
    p_ok = p < pieces
    lse = tl.load(lse_ptr + b * stride_lb + p * stride_lp + r, mask=p_ok, other=float("-inf"))
    weight = tl.exp(lse - tl.max(lse, 0))
    weight = weight / tl.sum(weight, 0)
    d = tl.arange(0, LORA)
    parts = tl.load(part_ptr + b * stride_pb + p[:, None] * stride_pp + r * stride_pr + d[None, :], mask=p_ok[:, None], other=0.0)
    tl.store(out_ptr + b * stride_ob + r * stride_or + d, tl.sum(parts * weight[:, None], 0).to(out_ptr.dtype.element_ty))


def mla_decode(torch, q, latent, lora: int, scale: float, pieces: int):
    """Attention of q [batch, rows, lora + rope] over the latent cache [batch, context,
    lora + rope] (values: its first `lora` columns), the context split into `pieces`:
    [batch, rows, lora]. Scratch for the pieces is allocated per call (a graph's pool
    keeps it)."""
    batch, rows, width = q.shape
    context = latent.shape[1]
    piece_tokens = triton.cdiv(context, pieces)
    pieces = triton.cdiv(context, piece_tokens)  # (none empty: an empty piece's sum would be 0/0)
    part = torch.empty(batch, pieces, rows, lora, device=q.device, dtype=torch.float32)
    lse = torch.empty(batch, pieces, rows, device=q.device, dtype=torch.float32)
    out = torch.empty(batch, rows, lora, device=q.device, dtype=q.dtype)
    tile = {"BLOCK_R": 16, "BLOCK_N": 16} if _INTERPRETED else {}
    _tuned_piece_kernel[lambda meta: (batch, triton.cdiv(rows, meta["BLOCK_R"]), pieces)](
        q, latent, part, lse, rows, context, piece_tokens, scale,
        q.stride(0), q.stride(1), latent.stride(0), latent.stride(1),
        part.stride(0), part.stride(1), part.stride(2), lse.stride(0), lse.stride(1),
        LORA=lora, ROPE=width - lora, **tile,
    )
    _combine_kernel[(batch, rows)](
        part, lse, out, pieces, part.stride(0), part.stride(1), part.stride(2), lse.stride(0), lse.stride(1),
        out.stride(0), out.stride(1), LORA=lora, PIECES=triton.next_power_of_2(pieces),
    )
    return out


TUNE_SHAPE = (32, 8192)  # (batch, context): where Seer's instances decode


def tune(torch, device: str, dtype, rows: int, width: int, lora: int, scale: float, pieces: int) -> None:
    """Let the autotuner pick the tile for `rows` query rows on a representative shape
    (`TUNE_SHAPE`, its context cut into `pieces` as the timed points cut theirs) rather
    than on whichever point comes first."""
    batch, context = TUNE_SHAPE
    q = torch.randn(batch, rows, width, device=device, dtype=dtype)
    latent = torch.randn(batch, context, width, device=device, dtype=dtype)
    mla_decode(torch, q, latent, lora, scale, pieces)


def check(torch, device: str, dtype, rows: int, width: int, lora: int, scale: float) -> float:
    """The kernel's largest error against attention computed in float32 (a 2 × 300-token
    latent cut into 3 pieces, the last one short); a timing of a wrong kernel is no
    evidence, so above 3% of the output's scale it raises."""
    q = torch.randn(2, rows, width, device=device, dtype=dtype)
    latent = torch.randn(2, 300, width, device=device, dtype=dtype)
    got = mla_decode(torch, q, latent, lora, scale, 3).float()
    scores = (q.float() @ latent.float().transpose(1, 2)) * scale
    want = torch.softmax(scores, -1) @ latent[..., :lora].float()
    error = float((got - want).abs().max() / want.abs().max())
    if not error <= 0.03:
        raise ArithmeticError(f"the Triton MLA kernel is off by {error:.1%} of its output on {device} ({dtype})")
    return error
