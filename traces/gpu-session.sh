#!/usr/bin/env bash
# One GPU session's profiling (issue 11; docs/calibration.md): plan here, time there,
# calibrate here. The GPU machine needs torch only: the plans carry every kernel shape.
#
#   bash traces/gpu-session.sh plan                  # here (seersim installed): traces/plans/*.json
#   bash traces/gpu-session.sh run OUT_DIR [DEVICE]  # on the GPU machine: minutes (10 plans, ≤ 90 s each)
#   bash traces/gpu-session.sh calibrate DIR         # here: held-out and cross-model MAPE, one calibration
#
# Environment: SEERSIM (default `seersim`) runs the CLI, PYTHON (default python3) the
# runner; PLANS (default traces/plans) is the plans' folder; GPU (default h100-sxm)
# the catalog GPU the plans name (the lent machine's: h100-sxm or h200); SMOKE=1 plans tiny
# attention-only grids (tests, CPU); BUDGET_S (default 90) caps each plan's run, so
# that a session fits the device's 8-minute window even if one plan hangs; ONLY (plan
# numbers, e.g. "8 9") runs those plans alone.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
plans="${PLANS:-traces/plans}"
seersim=(${SEERSIM:-seersim})
gpu="${GPU:-h100-sxm}"

# name | model | tp | ops ("" = all) | extra grid. In order of importance: the session
# may be cut short. Moonlight first: seer's speculation gain there rests on verifying
# drafts costing little where it runs (~36 sequences of ~31K tokens per GPU,
# KV-bound: the batch x context x width 1..9 grid brackets it).
# (The number orders the runs.)
PLAN_LIST=(
  "1-moonlight-16b-a3b|moonlight-16b-a3b|1||--batches 1,8,32,128,256"
  "2-qwen2.5-7b|qwen2.5-7b|1||"
  "3-llama-3.1-8b|llama-3.1-8b|1||"
  "4-kimi-k2-attention|kimi-k2|1|attn_decode,attn_prefill|"
  "5-qwen2-vl-72b-tp8-attention|qwen2-vl-72b|8|attn_decode,attn_prefill|"
  # whole decode iterations (every layer, own weights): the check of the operators' sum
  "6-qwen2.5-7b-decode-steps|qwen2.5-7b|1|decode_step|--batches 1,8,32,64,128 --contexts 1024,4096"
  "7-llama-3.1-8b-decode-steps|llama-3.1-8b|1|decode_step|--batches 1,8,32,64,128 --contexts 1024,4096"
  # fused kernels as serving engines run them (needs triton, as CUDA builds of torch have):
  # MLA decode through seersim's Triton kernel, the routed experts as grouped GEMMs
  "8-moonlight-16b-a3b-fused|moonlight-16b-a3b|1|attn_decode,moe_experts|--fused --batches 1,8,32,128,256"
  "9-kimi-k2-fused|kimi-k2|1|attn_decode,moe_experts|--fused"
  # an fp8 checkpoint's dense GEMMs in fp8 (the curves' 8-bit speedup: calibrate --base)
  "10-kimi-k2-fp8-gemms|kimi-k2|1|q_a_proj,q_b_proj,kv_a_proj,kv_b_proj,attn_out_proj,mlp_up_gate,mlp_down|--fused --tokens 1,8,32,64,128,256,512,1024,2048,4096,8192"
)
# (smoke: attention only; the GEMMs' weights alone take seconds to fill on a CPU)
SMOKE_GRID="--ops attn_decode,attn_prefill --batches 1,2 --contexts 16,64 --widths 1,3 --prefill 16 --repeats 2"

case "${1:-}" in
  plan)
    mkdir -p "$plans"
    for entry in "${PLAN_LIST[@]}"; do
      IFS='|' read -r name model tp ops grid <<<"$entry"
      # (smoke: no whole steps, whose weights alone are a 7B model's)
      [[ -n "${SMOKE:-}" && "$ops" == decode_step ]] && continue
      # (nor fused kernels: Triton compiles for a GPU; its interpreter is the unit tests')
      [[ -n "${SMOKE:-}" && "$grid" == *--fused* ]] && continue
      [[ -n "${SMOKE:-}" ]] && ops="" && grid="$SMOKE_GRID"
      # shellcheck disable=SC2086
      "${seersim[@]}" profile --model "$model" --tp "$tp" --gpu "$gpu" ${ops:+--ops "$ops"} $grid \
        --plan-out "$plans/$name.json"
    done
    ;;
  run)
    out="${2:?usage: gpu-session.sh run OUT_DIR [DEVICE]}"
    device="${3:-cuda}"
    mkdir -p "$out"
    python="${PYTHON:-python3}"
    { nvidia-smi || true; "$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'; } \
      >"$out/session-machine.txt" 2>&1
    status=0
    while IFS= read -r plan; do  # (in the plans' numbered order: 2 before 10)
      name="$(basename "$plan" .json)"
      # ONLY="8 9" runs those plans alone (the ones a session has not recorded yet)
      [[ -n "${ONLY:-}" && " $ONLY " != *" ${name%%-*} "* ]] && continue
      name="${name#*-}"
      start=$(date +%s)
      if PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" timeout "${BUDGET_S:-90}" \
          "$python" -m seersim.profile.torch_runner "$plan" --out "$out/profile-$name.csv" --device "$device"; then
        echo "$name: ok in $(( $(date +%s) - start )) s"
      else
        echo "$name: incomplete (exit $?: an item failed, or cut at ${BUDGET_S:-90} s); its table keeps what was measured"
        status=1
      fi
    done < <(printf '%s\n' "$plans"/*.json | sort -V)
    exit $status
    ;;
  calibrate)
    dir="${2:?usage: gpu-session.sh calibrate DIR}"
    shopt -s nullglob
    tables=("$dir"/profile-*.csv)
    (( ${#tables[@]} )) || { echo "no profile-*.csv in $dir"; exit 1; }
    operators=() tests=()
    for table in "${tables[@]}"; do
      if [[ "$table" == *-fused.csv ]]; then
        # (our own Triton MLA kernel is a floor on what serving kernels reach, not their figure)
        echo "$table: recorded, not fitted (docs/calibration.md, \"Fused kernels\")"
      elif [[ "$table" == *-decode-steps.csv ]]; then tests+=(--test "$table"); else operators+=("$table"); fi
    done
    for table in "${operators[@]}"; do
      [[ "$table" == *-attention.csv ]] && continue  # (attention alone fixes no GEMM curve)
      echo "== $table alone"
      "${seersim[@]}" calibrate cost "$table" --out "${table%.csv}.calibration.yaml" --json || true
    done
    if [[ -f "$dir/profile-qwen2.5-7b.csv" && -f "$dir/profile-llama-3.1-8b.csv" ]]; then
      echo "== fitted on qwen2.5-7b, tested on llama-3.1-8b"
      "${seersim[@]}" calibrate cost "$dir/profile-qwen2.5-7b.csv" --test "$dir/profile-llama-3.1-8b.csv" \
        --out "$dir/qwen2.5-7b-tested-on-llama.calibration.yaml" --json || true
    fi
    echo "== every operator table, tested on the whole decode steps: $dir/calibration.yaml"
    "${seersim[@]}" calibrate cost "${operators[@]}" "${tests[@]}" --out "$dir/calibration.yaml" --json
    ;;
  *)
    sed -n '2,12p' "${BASH_SOURCE[0]}"
    exit 2
    ;;
esac
