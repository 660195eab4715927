"""A local OpenAI-compatible judge server: ``transformers serve`` on loopback, and the models it serves.

- :class:`JudgeServer` runs ``transformers serve`` (transformers' own FastAPI/uvicorn server, the
  ``transformers[serving]`` extra) as a child process on ``127.0.0.1`` and a free port, waits on
  its ``GET /health``, and stops it on exit. ``base_url`` is the ``/v1`` root the ``openai``
  client takes; ``model_id`` is the name requests must carry (the server is pinned to it).
  Without a model the server loads whatever local folder a request names.
- :func:`resolve_model` turns what a user names (a folder, a hub id, a ``.gguf`` file or a node
  of the plan) into a folder the server and bert-score can load offline.
- :func:`gguf_folder`: ``transformers serve`` 5.24 cannot load GGUF weights itself (its model
  manager reads ``config.architectures``, which a GGUF config lacks), so a GGUF file is
  dequantized once into an ordinary safetensors folder: :mod:`harness.models`' conversion cache.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from harness.errors import HarnessError, LoadError

#: Seconds to wait for ``/health`` (loading a 135M model on a busy 2-core CPU takes ~20 s).
STARTUP_TIMEOUT = 180.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class JudgeServer:
    """``transformers serve`` on loopback, as a context manager (or ``start()``/``stop()``)."""

    def __init__(self, model: Optional[str] = None, *, device: str = "cpu", dtype: Optional[str] = None,
                 continuous_batching: bool = False, log_path: Optional[Path] = None,
                 startup_timeout: float = STARTUP_TIMEOUT, threads: Optional[int] = None) -> None:
        self.model = model
        self.device = device
        # bf16 matmuls are slow on most CPUs: serve in float32 there, in the weights' dtype on CUDA.
        self.dtype = dtype or ("float32" if device == "cpu" else "auto")
        self.continuous_batching = continuous_batching
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout = startup_timeout
        # One torch thread on the CPU, as generation uses (harness.inference.generate.cpu_threads): on a
        # shared 2-core machine two threads made one judge request 6x slower (22 s vs 3.6 s).
        self.threads = threads if threads is not None else (1 if device == "cpu" else None)
        self.port: Optional[int] = None
        self._proc: Optional[subprocess.Popen] = None
        self._log: Any = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise HarnessError("judge server: not started")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model_id(self) -> Optional[str]:
        """The model name requests carry (the one the server is pinned to)."""
        return self.model

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve"]
        if self.model:
            cmd.append(self.model)
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--device", self.device, "--dtype", self.dtype,
                "--log-level", "warning"]
        if self.continuous_batching:
            cmd.append("--continuous-batching")
        return cmd

    def start(self) -> "JudgeServer":
        """Start the server and wait until ``/health`` answers 200; a server that dies or hangs is an error."""
        from transformers.utils.import_utils import is_serve_available

        if not is_serve_available():
            raise HarnessError("transformers serve needs fastapi, uvicorn and openai: pip install -e '.[serve]'")
        self.port = free_port()
        env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"),
                   TOKENIZERS_PARALLELISM="false")
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")
        self._proc = subprocess.Popen(self.command(), stdout=self._log or subprocess.DEVNULL,
                                      stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        import httpx2

        deadline = time.monotonic() + self.startup_timeout
        url = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise HarnessError(f"judge server for {self.model or '(any model)'} exited with code "
                                   f"{self._proc.returncode} before it was healthy{self._log_tail()}")
            try:
                if httpx2.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.25)
        raise HarnessError(f"judge server for {self.model or '(any model)'}: /health did not answer 200 within "
                           f"{self.startup_timeout:.0f} s{self._log_tail()}")

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        if self._log is not None:
            self._log.flush()
        tail = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-8:]
        return f" (log {self.log_path}:\n" + "\n".join(tail) + ")"

    def stop(self) -> None:
        """Terminate the server (kill after 10 s) and close its log."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> "JudgeServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child: a SIGTERM when the process that started the server dies (no orphan servers)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# --------------------------------------------------------------------------- models


def gguf_folder(gguf: Path, cache_root: Optional[Path] = None) -> Path:
    """The bf16 safetensors folder dequantized from a GGUF file: the conversion cache's own folder
    (:func:`harness.models.convert_gguf`, keyed by the file's sha256, converted once)."""
    from harness.models import convert_gguf

    folder, _ = convert_gguf(Path(gguf), cache_root, progress=False)
    return folder


def resolve_model(spec: str, graph: Any = None, cache_root: Optional[Path] = None,
                  gguf_dir: Optional[Path] = None) -> tuple[str, str]:
    """``(what the server loads, a label for reports)`` for a folder, ``.gguf`` file, plan node or hub id.

    A node name of ``graph`` wins over a folder of the same name; a bare GGUF file name is also
    looked up in ``gguf_dir`` (the edges pass ``HARNESS_GGUF_DIR``; default ``~/.cache/harness/gguf``).
    """
    from harness.models import find_gguf

    if not spec:
        raise HarnessError("judge model: empty name")
    if graph is not None and spec in getattr(graph, "names", ()):
        return str(Path(graph.path(spec)).resolve()), f"plan node {spec}"
    p = Path(spec).expanduser()
    if spec.endswith(".gguf") and not p.is_file():
        from harness.config import DEFAULT_GGUF_DIR

        p = Path(gguf_dir or DEFAULT_GGUF_DIR).expanduser() / spec
    if (spec.endswith(".gguf") or p.is_file()) and find_gguf(str(p)) is not None:
        return str(gguf_folder(p, cache_root).resolve()), p.name
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise LoadError(f"{p}: not a model folder (no config.json)")
        return str(p.resolve()), p.name
    if p.exists():
        raise LoadError(f"{p}: neither a model folder nor a .gguf file")
    known = ", ".join(getattr(graph, "names", ())) if graph is not None else ""
    if "/" not in spec:
        raise HarnessError(f"judge model {spec!r}: no such folder, GGUF file or plan node"
                           + (f" (plan nodes: {known})" if known else ""))
    return spec, spec  # a hub id: loads from the local hub cache when offline


# --------------------------------------------------------------------------- claims session


@dataclass(frozen=True)
class JudgeEndpoint:
    """Where the claims' judge asks: ``base_url`` None means the environment's endpoint."""

    base_url: Optional[str]
    model: str
    label: str


def session_endpoint(spec: Optional[str], graph: Any = None, *, device: str = "auto",
                     cache_root: Optional[Path] = None, log_path: Optional[Path] = None,
                     judge_model: Optional[str] = None, gguf_dir: Optional[Path] = None
                     ) -> tuple[JudgeEndpoint, Optional[JudgeServer]]:
    """The claims session's judge: ``spec`` served on loopback (the caller stops the server), else
    the environment's (``OPENAI_*``, model ``judge_model``: the edges pass ``HARNESS_JUDGE_MODEL``;
    default gpt-4o-mini).

    On CUDA the server batches concurrent requests (``--continuous-batching``); on the CPU it
    generates one request at a time (its continuous batching is slower there for few requests).
    """
    if not spec:
        model = judge_model or "gpt-4o-mini"
        return JudgeEndpoint(None, model, model), None
    from harness.inference.generate import resolve_device

    target, label = resolve_model(spec, graph, cache_root, gguf_dir)
    dev = resolve_device(device).type
    server = JudgeServer(target, device=dev, continuous_batching=dev == "cuda", log_path=log_path).start()
    return JudgeEndpoint(server.base_url, target, f"{label} (transformers serve)"), server
