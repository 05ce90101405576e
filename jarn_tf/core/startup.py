"""Quiet start-up of the commands: TensorFlow's C++ start-up lines.

While its libraries load, TensorFlow 2.21 writes a few lines through absl's C++ logging before
``absl::InitializeLog`` runs, where ``TF_CPP_MIN_LOG_LEVEL`` has no effect yet::

  WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
  I0000 ... port.cc:153] oneDNN custom operations are on. ...
  I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
  I0000 ... cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use ...

and, on a machine without an NVIDIA GPU, an error line ``cuda_platform.cc:52] failed call to cuInit``.
None of them asks the user to do anything. ``quiet_tensorflow_startup`` (run by ``jarn_tf/__init__.py``
when a command of this package starts) defaults ``TF_CPP_MIN_LOG_LEVEL`` to 1 (C++ warnings and errors
stay) and, while ``tensorflow`` is first imported, captures file descriptor 2 and writes back everything
but those lines. Anything else written during the import (a warning that matters, a traceback) is
kept. ``TF_CPP_MIN_LOG_LEVEL=0`` set by the user turns all of this off.

Standard library only: importing this module must not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
from typing import Iterator, Optional

# absl's C++ log line: severity letter, date, time, thread id, file:line] message.
_LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ (?P<file>[\w.]+):\d+\] (?P<message>.*)$")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# (file, start of message) of lines that are noise everywhere.
_ALWAYS_NOISE = (
    ("port.cc", "oneDNN custom operations are on"),
    ("cpu_feature_guard.cc", "This TensorFlow binary is optimized"),
)
# Lines that are noise only where there is no GPU to use (elsewhere they say why it is not used).
_NO_GPU_NOISE = (
    ("cudart_stub.cc", "Could not find cuda drivers"),
    ("cuda_platform.cc", "failed call to cuInit"),
)
# cpu_feature_guard's message goes on on a second line.
_CONTINUATION = "To enable the following instructions:"


def gpu_expected() -> bool:
    """Whether this machine has an NVIDIA device that the process is allowed to see."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def filter_startup_lines(text: str, gpu: bool = False) -> str:
    """Drops TensorFlow's start-up noise from ``text`` (what was written to stderr).

    Args:
      text: captured stderr.
      gpu: whether the machine has a GPU; then the CUDA lines are kept (they say why it is unused).

    Returns:
      ``text`` without the noise lines, every other line unchanged and in order.
    """
    noise = _ALWAYS_NOISE + (() if gpu else _NO_GPU_NOISE)
    kept, drop_continuation = [], False
    for line in text.splitlines(keepends=True):
        stripped = line.rstrip("\r\n")
        if drop_continuation and stripped.startswith(_CONTINUATION):
            drop_continuation = False
            continue
        drop_continuation = False
        if stripped == _ABSL_PREAMBLE:
            continue
        match = _LOG_LINE.match(stripped)
        if match and any(match["file"] == f and match["message"].startswith(m) for f, m in noise):
            drop_continuation = match["file"] == "cpu_feature_guard.cc"
            continue
        kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def _stderr_filtered(gpu: bool) -> Iterator[None]:
    """Captures file descriptor 2 (C++ and Python writes alike) and writes back the non-noise."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield  # no usable stderr: nothing to filter
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = filter_startup_lines(capture.read().decode("utf-8", "replace"), gpu)
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of ``tensorflow`` with stderr filtered."""

    def __init__(self, loader: importlib.abc.Loader, gpu: bool):
        self._loader = loader
        self._gpu = gpu

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        # The module should look as if loaded by its own loader.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        with _stderr_filtered(self._gpu):
            self._loader.exec_module(module)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as usual, once, and wraps its loader in ``_QuietLoader``."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietLoader(spec.loader, gpu_expected())
        return spec


def started_as_command(argv: Optional[list] = None) -> bool:
    """Whether the process is ``python -m jarn_tf.<module>`` or a ``jarn-*`` console script.

    Under ``python -m``, ``sys.argv[0]`` is ``"-m"`` while the module's package is imported.
    """
    argv = sys.argv if argv is None else argv
    if not argv:
        return False
    return argv[0] == "-m" or os.path.basename(argv[0]).startswith("jarn-")


def quiet_tensorflow_startup() -> None:
    """Defaults TF_CPP_MIN_LOG_LEVEL to 1 and filters the noise of the first ``import tensorflow``.

    Does nothing when the user set ``TF_CPP_MIN_LOG_LEVEL=0`` (they asked for everything) or when
    TensorFlow is already imported.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() == "0":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorFlowFinder())


def prefer_onednn(environ: Optional[dict] = None) -> bool:
    """Defaults ``TF_ENABLE_ONEDNN_OPTS`` to 1 (oneDNN's CPU kernels) unless the user set it.

    TensorFlow turns oneDNN on by itself only on recent Intel CPUs; elsewhere (AMD EPYC, for one)
    its own CPU kernels run, and their input gradient of a strided convolution is several times
    slower than the forward pass: on a 2-core EPYC, a forward + input-gradient pass of the MNIST
    CNN on 250 images took 1.2-1.5 s without oneDNN and 0.5-0.65 s with it. Gradient-based attacks
    spend their time there, so the attack commands (``jarn_tf.evaluate``, ``jarn_tf.bench.attacks``)
    call this before TensorFlow is imported. Results can differ from oneDNN-off runs by
    floating-point rounding only. ``TF_ENABLE_ONEDNN_OPTS=0`` keeps TensorFlow's own kernels.

    Args:
      environ: the environment to change (default ``os.environ``).

    Returns:
      Whether oneDNN is asked for; it takes effect only if TensorFlow is not imported yet.
    """
    environ = os.environ if environ is None else environ
    environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    return environ["TF_ENABLE_ONEDNN_OPTS"].strip().lower() in ("1", "true")
