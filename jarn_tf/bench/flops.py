r"""FLOPs of one training step of a run, measured from its model, and what a paper-scale run costs.

  python -m jarn_tf.bench_flops [--flagfile=flags/cifar10_jarn.cfg]... [--extra_flags="--train_steps=10"] \
      [--output=docs/results/paper_scale_flops.json]

For each flagfile this builds the run's trainer exactly as ``python -m jarn_tf.train`` would
(``flag_utils.config_from_flags``, ``train_lib.validate_config``, ``trainers.build_trainer`` under
the default strategy and the run's mixed-precision policy), lists the step flavours the run's
schedule uses (``trainer.variant(step)`` for every step: JARN off / on / on with a discriminator
update, a GAN step with or without the generator's update...) and, for each flavour, converts
``trainer.replica_step`` on a batch of the flagfile's batch size (random images of the dataset's
shape) to XLA HLO (``tf.function(jit_compile=True).experimental_get_compiler_ir(...)(stage="hlo")``:
conversion only, nothing is compiled or run). ``hlo_flops`` counts that HLO:

* convolutions and dots: 2 x the multiply-adds (a convolution's multiplications by padding or by
  the holes of a dilated input are not counted, as XLA's own cost analysis does not);
* elementwise arithmetic, comparisons and selects: 1 per output element; reductions: 1 per input
  element; reduce-window: the window's size per output element;
* only what the computation's result depends on (the HLO before optimisation keeps dead code,
  which XLA and, without XLA, Grappler remove);
* a while loop (PGD's steps): its body times its trip count (read from the loop's condition);
  a call or fusion: its computation; a conditional: its most expensive branch.

A run's FLOPs per step is the mean over its steps (each flavour weighted by how many steps use
it); its total is that times its steps (``--epochs`` x training-set size // batch, or
``--train_steps``, as ``config_from_flags`` resolves them, without reading the data: the
training-set sizes are ``paper.TRAIN_SET_SIZE``). Not counted: the input pipeline, the
evaluations during training (``--eval_every``) and at export, summaries, and the host's work.

A fine-tuning flagfile (``--mode=advgan_finetune``) needs ``--init_from``: without one, the
co-training flagfile beside it (``<prefix>_advgan.cfg``) is built, its networks saved to a
temporary run directory, and the fine-tuning built from that, as the study does.

Without ``--flagfile`` it measures every paper-scale run of the three papers
(``paper_scale_runs``): JARN's ``python -m jarn_tf.paper --scale=paper`` trainings (from that
driver's own plan, variants included), the GAN paper's CIFAR-10 cells
(``flags/cifar10_{gan,lsgan,wgan}_*.cfg``), ``python -m jarn_tf.gan_study --scale=paper``'s
setups, and Rob-GAN's ``python -m jarn_tf.robgan_study --scale=cifar10`` trainings; and it sums
them per table (``plans``). The study's setups differ in learning rate, loss, activation and
normalisation, none of which changes a convolution's or a dot's shape: one setup per (batch
size, block, filters, regulariser) is traced and stands for the others (the JSON says which).

The projection (``--peak_tflops`` x ``--efficiency`` sustained, no step under
``--step_floor_ms``) is an assumption, not a measurement: see docs/PAPER_SCALE.md.
``--from_json`` reuses an earlier output's measurements to total other seeds or project other
assumptions without tracing again. Each run is measured in its own Python process
(``--no-isolate``: all in this one).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Assumed GPU (docs/PAPER_SCALE.md): NVIDIA A100's dense TF32 tensor-core peak, 156 TFLOPS
# (NVIDIA A100 datasheet), which TensorFlow uses for float32 convolutions and matmuls on Ampere
# by default; and the fraction of it a training step sustains.
DEFAULT_PEAK_TFLOPS = 156.0
DEFAULT_EFFICIENCY = 0.25
DEFAULT_WORKERS = (1, 8)
# Assumed shortest training step on that GPU whatever its FLOPs (docs/PAPER_SCALE.md).
DEFAULT_STEP_FLOOR_MS = 10.0
DEFAULT_PARALLEL_EFFICIENCY = 0.9

METHOD = (
    "XLA HLO of the trainer's replica_step before optimisation "
    "(tf.function(jit_compile=True).experimental_get_compiler_ir(batch, variant)(stage='hlo'); "
    "nothing compiled or run), dead code left out, counted by jarn_tf.bench.flops.hlo_flops: "
    "2 x multiply-adds of convolutions (padding and dilation holes excluded) and dots, 1 per element "
    "of elementwise arithmetic, comparisons and selects, 1 per input element of reductions; "
    "while loops times their trip count; step flavours weighted by the run's schedule"
)

# ---------------------------------------------------------------------------
# Counting an HLO module.

# Elementwise operations counted as one FLOP per output element (data movement, conversions,
# bit manipulation and random bits are not).
ELEMENTWISE = frozenset(
    """add subtract multiply divide remainder maximum minimum power atan2 negate abs sign
    exponential exponential-minus-one log log-plus-one logistic tanh sqrt rsqrt cbrt sine cosine
    tan erf floor ceil round-nearest-afz round-nearest-even compare select clamp is-finite""".split()
)


@dataclasses.dataclass
class FlopCount:
    """FLOPs of an HLO computation, by kind.

    Attributes:
      conv: 2 x multiply-adds of the convolutions.
      dot: 2 x multiply-adds of the dots (matrix products).
      elementwise: elementwise arithmetic, comparisons and selects.
      reduce: reductions and reduce-windows.
      notes: what could not be counted exactly (empty for the runs of this project).
    """

    conv: float = 0.0
    dot: float = 0.0
    elementwise: float = 0.0
    reduce: float = 0.0
    notes: List[str] = dataclasses.field(default_factory=list)

    @property
    def matmul(self) -> float:
        """Convolutions and dots: the tensor-core work."""
        return self.conv + self.dot

    @property
    def total(self) -> float:
        return self.conv + self.dot + self.elementwise + self.reduce

    def add(self, other: "FlopCount", times: float = 1.0) -> None:
        self.conv += times * other.conv
        self.dot += times * other.dot
        self.elementwise += times * other.elementwise
        self.reduce += times * other.reduce
        self.notes.extend(n for n in other.notes if n not in self.notes)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "total": self.total,
            "conv": self.conv,
            "dot": self.dot,
            "elementwise": self.elementwise,
            "reduce": self.reduce,
            "notes": list(self.notes),
        }


@dataclasses.dataclass
class _Instr:
    name: str
    shape: str
    opcode: str
    operands: List[Tuple[str, str]]  # (shape text, name) of each operand
    attrs: str
    root: bool = False


def _closing(text: str, start: int) -> int:
    """Index of the bracket closing the one at ``text[start]``."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack = []
    for i in range(start, len(text)):
        ch = text[i]
        if ch in pairs:
            stack.append(pairs[ch])
        elif stack and ch == stack[-1]:
            stack.pop()
            if not stack:
                return i
    raise ValueError(f"unbalanced brackets in HLO: {text[start:start + 80]!r}")


def _split_top(text: str) -> List[str]:
    """``text`` split at the commas outside brackets."""
    parts, depth, last = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[last:i])
            last = i + 1
    parts.append(text[last:])
    return [p.strip() for p in parts if p.strip()]


_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*[({]")
_NAME = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*")
_OPCODE = re.compile(r"\s*([a-z][a-z0-9\-]*)\(")
_DIMS = re.compile(r"^[a-z][a-z0-9]*\[([0-9,]*)\]")


def _comment_free(line: str) -> str:
    return re.sub(r"/\*.*?\*/", "", line)


def parse_hlo(text: str) -> Tuple[Dict[str, List[_Instr]], str]:
    """The computations of an HLO module's text (name -> instructions) and the entry's name."""
    comps: Dict[str, List[_Instr]] = {}
    entry = ""
    current: Optional[List[_Instr]] = None
    for raw in text.splitlines():
        if not raw.strip() or raw.startswith("HloModule"):
            continue
        if not raw[0].isspace():
            if raw.startswith("}"):
                current = None
                continue
            m = _HEADER.match(raw)
            if m and raw.rstrip().endswith("{"):
                current = comps.setdefault(m.group(2), [])
                if m.group(1):
                    entry = m.group(2)
            continue
        if current is None:
            continue
        line = _comment_free(raw)
        m = _NAME.match(line)
        if not m:
            continue
        rest = line[m.end() :]
        if rest.startswith("("):
            end = _closing(rest, 0)
            shape, rest = rest[: end + 1], rest[end + 1 :]
        else:
            shape, _, rest = rest.partition(" ")
        op = _OPCODE.match(rest)
        if not op:
            continue
        open_at = op.end() - 1
        close_at = _closing(rest, open_at)
        operands = []
        for part in _split_top(rest[open_at + 1 : close_at]):
            head, _, tail = part.rpartition(" ")
            if tail.startswith("%") or (head and not tail[:1].isdigit()):
                operands.append((head, tail.lstrip("%")))
            else:  # a literal (constant's value)
                operands.append(("", part))
        root = line.lstrip().startswith("ROOT ")
        current.append(_Instr(m.group(1), shape, op.group(1), operands, rest[close_at + 1 :], root))
    if not entry:
        raise ValueError("HLO text without an ENTRY computation")
    return comps, entry


def _dims(shape: str) -> Optional[List[int]]:
    m = _DIMS.match(shape.strip())
    if not m:
        return None
    return [int(d) for d in m.group(1).split(",") if d]


def _elements(shape: str) -> int:
    dims = _dims(shape)
    return math.prod(dims) if dims is not None else 0


def _attr(attrs: str, key: str) -> Optional[str]:
    """The value of ``key=`` in an instruction's attributes (a {...} value whole)."""
    m = re.search(r"(?:^|[\s,])" + re.escape(key) + r"=", attrs)
    if not m:
        return None
    start = m.end()
    if start < len(attrs) and attrs[start] == "{":
        return attrs[start : _closing(attrs, start) + 1]
    end = start
    while end < len(attrs) and attrs[end] not in ", ":
        end += 1
    return attrs[start:end]


def _window(attrs: str, rank: int) -> List[Dict[str, int]]:
    """Per spatial dimension: size, stride, pad_low, lhs_dilate, rhs_dilate."""
    dims = [dict(size=1, stride=1, pad_low=0, lhs_dilate=1, rhs_dilate=1) for _ in range(rank)]
    text = _attr(attrs, "window")
    if not text:
        return dims
    for item in text.strip("{}").split():
        key, _, value = item.partition("=")
        parts = value.split("x")
        for d, part in enumerate(parts[:rank]):
            if key == "pad":
                dims[d]["pad_low"] = int(part.split("_")[0])
            elif key in ("size", "stride", "lhs_dilate", "rhs_dilate"):
                dims[d][key] = int(part)
    return dims


def _valid_pairs(in_size: int, out_size: int, w: Mapping[str, int]) -> int:
    """(output position, kernel position) pairs of one dimension that read a real input element."""
    count = 0
    for k in range(w["size"]):
        for o in range(out_size):
            i = o * w["stride"] - w["pad_low"] + k * w["rhs_dilate"]
            if i % w["lhs_dilate"]:
                continue
            i //= w["lhs_dilate"]
            count += 0 <= i < in_size
    return count


def conv_flops(instr: _Instr, notes: List[str]) -> float:
    """2 x the multiply-adds of a convolution that read real (not padding, not dilation) inputs."""
    labels = _attr(instr.attrs, "dim_labels")
    lhs, rhs, out = _dims(instr.operands[0][0]), _dims(instr.operands[1][0]), _dims(instr.shape)
    if not labels or lhs is None or rhs is None or out is None:
        notes.append(f"convolution {instr.name} without shapes or dim_labels: not counted")
        return 0.0
    lhs_l, rest = labels.split("_", 1)
    rhs_l, out_l = rest.split("->")
    rank = sum(ch.isdigit() for ch in out_l)
    window = _window(instr.attrs, rank)
    pairs = 1
    for d in range(rank):
        c = str(d)
        pairs *= _valid_pairs(lhs[lhs_l.index(c)], out[out_l.index(c)], window[d])
    if int(_attr(instr.attrs, "batch_group_count") or 1) > 1:
        notes.append("convolution with batch_group_count > 1: counted as if 1")
    macs = out[out_l.index("b")] * out[out_l.index("f")] * rhs[rhs_l.index("i")] * pairs
    return 2.0 * macs


def dot_flops(instr: _Instr) -> float:
    lhs = _dims(instr.operands[0][0]) or []
    contracting = (_attr(instr.attrs, "lhs_contracting_dims") or "{}").strip("{}")
    k = math.prod(lhs[int(c)] for c in contracting.split(",") if c.strip())
    return 2.0 * _elements(instr.shape) * k


def _called(attrs: str, key: str) -> List[str]:
    value = _attr(attrs, key)
    if not value:
        return []
    return [v.strip().lstrip("%") for v in value.strip("{}").split(",") if v.strip()]


def _int_constant(comp: Mapping[str, _Instr], name: str) -> Optional[int]:
    instr = comp.get(name)
    if instr is None or instr.opcode != "constant" or not instr.operands:
        return None
    try:
        return int(instr.operands[0][1])
    except ValueError:
        return None


def _tuple_index(comp: Mapping[str, _Instr], name: str) -> Optional[int]:
    instr = comp.get(name)
    if instr is None or instr.opcode != "get-tuple-element":
        return None
    index = _attr(instr.attrs, "index")
    return int(index) if index is not None else None


def trip_count(
    comps: Mapping[str, List[_Instr]], caller: Sequence[_Instr], loop: _Instr
) -> Optional[int]:
    """The iterations of a counted while loop (``i < N`` from a constant start), None if not one.

    XLA's ``known_trip_count`` when the HLO has it; else the loop's condition: a scalar
    comparison of a tuple element with a constant, the element's start a constant of the loop's
    initial tuple.
    """
    known = re.search(r'known_trip_count"?\s*:\s*\{\s*"?n"?\s*:\s*"?(\d+)', loop.attrs)
    if known:
        return int(known.group(1))
    by_name = {i.name: i for i in caller}
    init = by_name.get(loop.operands[0][1]) if loop.operands else None
    pending = _called(loop.attrs, "condition")
    seen = set()
    while pending:
        name = pending.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        comp = {i.name: i for i in comps[name]}
        for instr in comps[name]:
            if instr.opcode in ("call", "fusion"):
                pending += _called(instr.attrs, "to_apply") + _called(instr.attrs, "calls")
            if instr.opcode != "compare" or not instr.shape.startswith("pred[]"):
                continue
            direction = _attr(instr.attrs, "direction")
            (_, a), (_, b) = instr.operands[:2]
            if _int_constant(comp, b) is not None and _tuple_index(comp, a) is not None:
                bound, index = _int_constant(comp, b), _tuple_index(comp, a)
            elif _int_constant(comp, a) is not None and _tuple_index(comp, b) is not None:
                bound, index = _int_constant(comp, a), _tuple_index(comp, b)
                direction = {"GT": "LT", "GE": "LE"}.get(direction or "", "")
            else:
                continue
            if direction not in ("LT", "LE") or init is None or init.opcode != "tuple":
                continue
            start = _int_constant(by_name, init.operands[index][1])
            if start is None:
                continue
            return max(0, bound - start + (direction == "LE"))
    return None


def live_instructions(instrs: Sequence[_Instr]) -> List[_Instr]:
    """The instructions a computation's ROOT depends on, in order.

    The HLO of a TensorFlow function before optimisation keeps dead code (e.g. a convolution's
    input gradient when only its kernel's is used); XLA, and Grappler without XLA, remove it.
    Variable updates are outputs of the entry computation, so they are live.
    """
    if not instrs:
        return []
    by_name = {i.name: i for i in instrs}
    roots = [i for i in instrs if i.root] or [instrs[-1]]
    live, stack = set(), [r.name for r in roots]
    while stack:
        name = stack.pop()
        if name in live or name not in by_name:
            continue
        live.add(name)
        stack.extend(n for _, n in by_name[name].operands)
    return [i for i in instrs if i.name in live]


def hlo_flops(text: str) -> FlopCount:
    """The FLOPs of an HLO module's entry computation (see the module docstring for the rules)."""
    comps, entry = parse_hlo(text)
    memo: Dict[str, FlopCount] = {}

    def cost(name: str) -> FlopCount:
        if name in memo:
            return memo[name]
        memo[name] = FlopCount()  # a recursive call (there are none in HLO) counts 0
        out = FlopCount()
        instrs = live_instructions(comps.get(name, []))
        for instr in instrs:
            op = instr.opcode
            if op == "convolution":
                out.conv += conv_flops(instr, out.notes)
            elif op == "dot":
                out.dot += dot_flops(instr)
            elif op in ELEMENTWISE:
                out.elementwise += _elements(instr.shape)
            elif op == "reduce":
                out.reduce += _elements(instr.operands[0][0]) if instr.operands else 0
            elif op == "reduce-window":
                window = _window(instr.attrs, len(_dims(instr.shape) or []))
                out.reduce += _elements(instr.shape) * math.prod(w["size"] for w in window)
            elif op == "while":
                n = trip_count(comps, instrs, instr)
                if n is None:
                    n = 1
                    out.notes.append(f"while loop {instr.name} of unknown trip count: counted once")
                for called in _called(instr.attrs, "body") + _called(instr.attrs, "condition"):
                    out.add(cost(called), n)
            elif op in ("call", "fusion", "async-start"):
                for called in _called(instr.attrs, "to_apply") + _called(instr.attrs, "calls"):
                    out.add(cost(called))
            elif op == "conditional":
                branches = _called(instr.attrs, "branch_computations")
                branches += _called(instr.attrs, "true_computation")
                branches += _called(instr.attrs, "false_computation")
                if branches:
                    costs = [cost(b) for b in branches]
                    out.add(max(costs, key=lambda c: c.total))
                    if len({round(c.total) for c in costs}) > 1:
                        out.notes.append("conditional with branches of different cost: the largest counted")
            elif op in ("custom-call", "map", "scatter", "select-and-scatter", "sort"):
                note = f"{op} not counted"
                if note not in out.notes:
                    out.notes.append(note)
        memo[name] = out
        return out

    return cost(entry)


# ---------------------------------------------------------------------------
# Building a run as training does.


def _config_flag_values(argv: Sequence[str]):
    """absl flags of the config (``flag_utils.define_config_flags``) parsed from ``argv``.

    Flagfiles are expanded and the earlier of --train_steps / --epochs dropped, as
    ``jarn_tf.train`` does, so ``--extra_flags=--train_steps=N`` shortens a flagfile's --epochs.
    """
    from absl import flags

    from jarn_tf.core import flag_utils
    from jarn_tf.train import keep_last_length_flag

    fv = flags.FlagValues()
    flag_utils.define_config_flags(fv)
    # Run-level flags of jarn_tf.train that are not part of the configuration.
    for name in ("model_dir", "tpu"):
        flags.DEFINE_string(name, None, "", flag_values=fv)
    for name in ("cpu_devices", "eval_examples", "verbose"):
        flags.DEFINE_integer(name, 0, "", flag_values=fv)
    with _InRepo():
        args = keep_last_length_flag(list(argv))
        fv(["bench_flops", *args])
    return fv


class _InRepo:
    """Runs in the repository root: flagfiles include each other by relative path."""

    def __enter__(self):
        self._cwd = os.getcwd()
        os.chdir(REPO)

    def __exit__(self, *exc):
        os.chdir(self._cwd)


def resolve_config(argv: Sequence[str]):
    """The ExperimentConfig of a command line, without reading any data.

    ``--epochs`` counts its steps from ``paper.TRAIN_SET_SIZE`` instead of the training split.
    """
    from jarn_tf.core import data, flag_utils
    from jarn_tf.reproduce.paper import TRAIN_SET_SIZE

    fv = _config_flag_values(argv)
    original = data.steps_per_epoch

    def steps_per_epoch(config, batch: int) -> int:
        return TRAIN_SET_SIZE[config.dataset] // batch

    data.steps_per_epoch = steps_per_epoch
    try:
        return flag_utils.config_from_flags(fv)
    finally:
        data.steps_per_epoch = original


def _cotraining_flagfile(flagfile: str) -> str:
    """flags/<prefix>_advgan_finetune.cfg -> flags/<prefix>_advgan.cfg."""
    return re.sub(r"_advgan_finetune\.cfg$", "_advgan.cfg", flagfile)


def _write_cotraining_run(argv: Sequence[str], model_dir: str) -> None:
    """Builds the co-training of ``argv`` and saves it as a run (config.json, a checkpoint)."""
    import tensorflow as tf

    from jarn_tf.core import checkpoints, data, loop as train_lib
    from jarn_tf import config as config_lib
    from jarn_tf.core.trainer import build_trainer

    config = resolve_config(argv)
    train_lib.validate_config(config)
    with train_lib.mixed_precision_scope(config.model.mixed_precision):
        trainer = build_trainer(config, data.dataset_info(config.data.dataset), tf.distribute.get_strategy())
    checkpoint = tf.train.Checkpoint(**trainer.checkpoint_items())
    tf.train.CheckpointManager(checkpoint, os.path.join(model_dir, checkpoints.CHECKPOINT_DIR), 1).save()
    config_lib.write_config(config, os.path.join(model_dir, train_lib.CONFIG_FILE))


def count_variants(
    variant: Callable[[int], Hashable], steps: int
) -> "collections.OrderedDict[Hashable, int]":
    """How many of the run's steps use each step flavour, in order of first use."""
    counts: "collections.OrderedDict[Hashable, int]" = collections.OrderedDict()
    for step in range(steps):
        v = variant(step)
        counts[v] = counts.get(v, 0) + 1
    return counts


def step_hlo(trainer, batch_size: int, variant: Hashable, seed: int = 0) -> str:
    """The HLO text of ``trainer.replica_step`` on a random batch of ``batch_size``, for ``variant``."""
    import tensorflow as tf

    shape = [batch_size, *trainer.info.image_shape]
    images = tf.random.stateless_uniform(shape, [seed, 0])
    labels = tf.random.stateless_uniform(
        [batch_size], [seed, 1], minval=0, maxval=trainer.info.num_classes, dtype=tf.int64
    )
    fn = tf.function(trainer.replica_step, jit_compile=True)
    return fn.experimental_get_compiler_ir((images, labels), variant)(stage="hlo")


def measure(
    flagfile: Optional[str], extra_flags: Sequence[str] = (), name: Optional[str] = None
) -> Dict[str, Any]:
    """Builds the run of ``flagfile`` (None: the flags alone) plus ``extra_flags`` and measures its
    FLOPs per step.

    Returns:
      The run's facts: mode, dataset, batch, steps, each step flavour's steps and FLOPs, the
      weighted FLOPs per step and the total.
    """
    import keras
    import tensorflow as tf

    from jarn_tf.core import data, loop as train_lib
    from jarn_tf.core.trainer import build_trainer

    tic = time.time()
    argv = ([f"--flagfile={flagfile}"] if flagfile else []) + list(extra_flags)
    config = resolve_config(argv)
    note = ""
    tmp = None
    if config.mode == "advgan_finetune" and not config.mode_config.init_from:
        tmp = tempfile.TemporaryDirectory(prefix="bench_flops_cotraining_")
        cotraining = _cotraining_flagfile(flagfile or "")
        _write_cotraining_run([f"--flagfile={cotraining}"], tmp.name)
        config = resolve_config(argv + [f"--init_from={tmp.name}"])
        note = f"fine-tuning built from a fresh co-training of {cotraining} (its --init_from)"
    try:
        train_lib.validate_config(config)
        info = data.dataset_info(config.data.dataset)
        with train_lib.mixed_precision_scope(config.model.mixed_precision):
            trainer = build_trainer(config, info, tf.distribute.get_strategy())
        steps = config.optimizer.train_steps
        batch = config.optimizer.batch_size
        variants = []
        total = FlopCount()
        for variant, count in count_variants(trainer.variant, steps).items():
            t0 = time.time()
            flops = hlo_flops(step_hlo(trainer, batch, variant, config.seed))
            if flops.matmul <= 0:
                raise ValueError(f"no convolution or dot counted in the step {variant!r}")
            total.add(flops, count)
            variants.append(
                {
                    "variant": repr(variant),
                    "steps": count,
                    "flops": flops.as_dict(),
                    "trace_seconds": round(time.time() - t0, 1),
                }
            )
    finally:
        if tmp is not None:
            tmp.cleanup()
    n_train = _train_set_size(config.data.dataset)
    per_step = {k: (v / steps if isinstance(v, float) else v) for k, v in total.as_dict().items()}
    out = {
        "name": name or _run_name(flagfile, extra_flags),
        "flagfile": flagfile,
        "extra_flags": list(extra_flags),
        "mode": config.mode,
        "dataset": config.data.dataset,
        "image_shape": list(info.image_shape),
        "batch_size": batch,
        "images_per_step": batch,
        "train_steps": steps,
        "epochs": round(steps * batch / n_train, 2) if n_train else None,
        "variants": variants,
        "flops_per_step": per_step["total"],
        "matmul_flops_per_step": per_step["conv"] + per_step["dot"],
        "total_flops": total.total,
        "notes": total.notes + ([note] if note else []),
        "seconds": round(time.time() - tic, 1),
    }
    del trainer
    keras.backend.clear_session()
    return out


def _train_set_size(dataset: str) -> Optional[int]:
    from jarn_tf.reproduce.paper import TRAIN_SET_SIZE

    return TRAIN_SET_SIZE.get(dataset)


def _run_name(flagfile: Optional[str], extra_flags: Sequence[str]) -> str:
    base = os.path.splitext(os.path.basename(flagfile))[0] if flagfile else ""
    return " ".join([b for b in [base] if b] + list(extra_flags))


# ---------------------------------------------------------------------------
# The paper-scale runs and the tables they fill.


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One configuration to measure: a flagfile (or none: the flags say everything) plus the flags
    that change the training step; ``label`` names it in tables (not part of its identity)."""

    flagfile: str
    extra_flags: Tuple[str, ...] = ()
    label: str = dataclasses.field(default="", compare=False)

    @property
    def key(self) -> str:
        return _run_name(self.flagfile, self.extra_flags)

    def plus(self, extra: Sequence[str]) -> "RunSpec":
        return RunSpec(self.flagfile, self.extra_flags + tuple(extra), self.label)


# Flags of a training command that do not change what a step computes.
_RUN_ONLY_FLAGS = (
    "seed",
    "model_dir",
    "verbose",
    "download",
    "nodownload",
    "data_dir",
    "init_from",
    "fcd_network",
    "fcd_samples",
    "eval_every",
    "checkpoint_every",
    "summary_every",
    "image_summary_every",
    "eval_examples",
)


def step_flags(args: Sequence[str]) -> Tuple[str, Tuple[str, ...]]:
    """(flagfile, the other flags that change the step) of a ``jarn_tf.train`` command's arguments."""
    flagfile, extra = "", []
    for arg in args:
        if not arg.startswith("--"):
            continue
        name = arg[2:].split("=", 1)[0]
        if name == "flagfile":
            flagfile = arg.split("=", 1)[1]
        elif name not in _RUN_ONLY_FLAGS:
            extra.append(arg)
    return flagfile, tuple(extra)


GAN_LOSSES = ("gan", "lsgan", "wgan")
GAN_REGS = ("none", "in", "gp", "ar", "rfm")
GAN_APPENDIX = ("gan_ar_loss", "gan_rfm_loss", "gan_gp_loss") + tuple(
    f"gan_{reg}_{attack}" for attack in ("fgsm", "pgd", "cw") for reg in ("ar", "rfm")
)


def jarn_plans(seeds: Sequence[int]) -> Dict[str, List[Tuple[str, RunSpec]]]:
    """Per JARN experiment at ``--scale=paper``: its trainings (model name, run), from paper.plan."""
    from jarn_tf.reproduce import paper

    plans: Dict[str, List[Tuple[str, RunSpec]]] = {}
    for experiment in paper.EXPERIMENTS:
        args = paper.parse_args(
            [f"--experiment={experiment}", "--scale=paper", f"--seeds={','.join(map(str, seeds))}"]
        )
        ctx = paper.Context(args)
        with _InRepo():
            paper.plan(ctx)
        runs = []
        for job in ctx.jobs.values():
            if job.kind == "train":
                flagfile, extra = step_flags(job.args)
                runs.append((os.path.basename(job.key), RunSpec(flagfile, extra)))
        plans[f"jarn_{experiment}"] = runs
    return plans


def gan_table1_plans(seeds: Sequence[int]) -> Dict[str, List[Tuple[str, RunSpec]]]:
    """The GAN paper's CIFAR-10 cells: Table 1a (15) and Appendices D and F (9)."""
    cells = [f"{loss}_{reg}" for reg in GAN_REGS for loss in GAN_LOSSES]
    return {
        "gan_table1a": [
            (f"{c}_seed{s}", RunSpec(f"flags/cifar10_{c}.cfg")) for s in seeds for c in cells
        ],
        "gan_appendix_d_f": [
            (f"{c}_seed{s}", RunSpec(f"flags/cifar10_{c}.cfg")) for s in seeds for c in GAN_APPENDIX
        ],
    }


def gan_study_plan(setups: int, seed: int) -> Tuple[List[Tuple[str, RunSpec]], Dict[str, RunSpec]]:
    """``gan_study --scale=paper``'s runs, and the run measured for each (see the module docstring).

    Returns:
      ([(run name, its own configuration)], run name -> the configuration measured for it).
    """
    from jarn_tf.gan import study as gan_study

    args = argparse.Namespace(
        scale="paper", train_steps=0, fcd_network="", fcd_samples=0, seed=seed, data_dir=None
    )
    runs, measured_for, by_shape = [], {}, {}
    for i, setup in enumerate(gan_study.sample_setups(setups, seed)):
        for reg in gan_study.REGS:
            cmd = gan_study.train_args(setup, reg, args, model_dir="")
            label = "gan_study {gan_loss} b{batch_size} {gan_block} f{filters} {gan_activation} {gan_norm}"
            label = label.format(**setup)
            spec = RunSpec("", step_flags(cmd)[1], label=f"{label} {reg}")
            name = f"setup{i:02d}/{reg}"
            runs.append((name, spec))
            shape = (setup["batch_size"], setup["gan_block"], setup["filters"], reg)
            measured_for[name] = by_shape.setdefault(shape, spec)
    return runs, measured_for


def robgan_plans(seeds: Sequence[int]) -> Dict[str, List[Tuple[str, RunSpec]]]:
    """Rob-GAN's trainings at ``robgan_study --scale=cifar10`` per experiment, from its plan."""
    from jarn_tf.robgan import study as robgan_study

    plans = {}
    # The study's command line with every setting at the scale's default (None).
    defaults = dict.fromkeys(
        "ablation_seeds figure_eps table_eps pgd_examples_figures pgd_examples_table autoattack_examples "
        "fcd_samples eval_every_cotrain eval_every_finetune eval_every_pgd_at output_dir feature_net "
        "data_dir docs_dir".split()
    )
    for experiment in robgan_study.EXPERIMENTS:
        args = argparse.Namespace(
            experiment=experiment, scale="cifar10", seeds=",".join(map(str, seeds)), **defaults
        )
        study = robgan_study.Study(args)
        runs = []
        for stage in study.plan([experiment]).values():
            if stage.kind == "train":
                flagfile, extra = step_flags(stage.args)
                runs.append((stage.key, RunSpec(flagfile, extra)))
        plans[f"robgan_{experiment}"] = runs
    return plans


def paper_scale_runs(
    seeds: Sequence[int] = (0,), study_setups: int = 55
) -> Tuple[Dict[str, List[Tuple[str, RunSpec]]], Dict[str, Dict[str, RunSpec]]]:
    """Every paper-scale plan (name -> [(run, configuration)]) and, per plan, the configuration
    measured for each run where it is another's (the GAN study's)."""
    plans: Dict[str, List[Tuple[str, RunSpec]]] = {}
    plans.update(jarn_plans(seeds))
    plans.update(gan_table1_plans(seeds))
    study_runs, measured_for = gan_study_plan(study_setups, 0)
    plans["gan_table2"] = study_runs
    plans.update(robgan_plans(seeds))
    return plans, {"gan_table2": measured_for}


# ---------------------------------------------------------------------------
# Projection and output.


@dataclasses.dataclass(frozen=True)
class Projection:
    """The assumed GPU: ``efficiency`` of ``peak_tflops`` sustained, and no step shorter than
    ``step_floor_ms`` (per-step overheads: kernel launches, the executor, the optimizer's small
    ops; they, not the FLOPs, bound the small-batch GAN steps)."""

    peak_tflops: float = DEFAULT_PEAK_TFLOPS
    efficiency: float = DEFAULT_EFFICIENCY
    step_floor_ms: float = DEFAULT_STEP_FLOOR_MS

    def step_seconds(self, flops: float) -> float:
        return max(flops / (self.peak_tflops * 1e12 * self.efficiency), self.step_floor_ms / 1000.0)

    def run_hours(self, result: Mapping[str, Any]) -> float:
        """Hours of a measured run on one GPU: each step flavour's steps at its own step time."""
        seconds = sum(v["steps"] * self.step_seconds(v["flops"]["total"]) for v in result["variants"])
        return seconds / 3600.0


def _fmt_flops(value: float) -> str:
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.3g} "


def table_lines(runs: Sequence[Mapping[str, Any]], projection: Projection) -> List[str]:
    """A text table: run, steps, images/step, FLOPs/step, total, GPU hours."""
    header = ["run", "steps", "img/step", "FLOP/step", "matmul %", "total FLOP", "GPU h"]
    rows = []
    for r in runs:
        share = 100.0 * r["matmul_flops_per_step"] / r["flops_per_step"] if r["flops_per_step"] else 0.0
        rows.append(
            [
                r["name"],
                str(r["train_steps"]),
                str(r["images_per_step"]),
                _fmt_flops(r["flops_per_step"]),
                f"{share:.1f}",
                _fmt_flops(r["total_flops"]),
                f"{projection.run_hours(r):.2f}",
            ]
        )
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return [fmt(header)] + [fmt(r) for r in rows]


def plan_totals(
    plans: Mapping[str, Sequence[Tuple[str, RunSpec]]],
    measured_for: Mapping[str, Mapping[str, RunSpec]],
    results: Mapping[str, Mapping[str, Any]],
    projection: Projection,
    workers: Sequence[int],
    parallel_efficiency: float,
) -> Dict[str, Any]:
    """Per plan: its runs, total FLOPs and projected hours (one GPU; N GPUs, runs spread over them)."""
    out = {}
    for plan, runs in plans.items():
        rows, total, one, longest = [], 0.0, 0.0, 0.0
        for run, spec in runs:
            measured = measured_for.get(plan, {}).get(run, spec)
            result = results[measured.key]
            hours = projection.run_hours(result)
            total += result["total_flops"]
            one += hours
            longest = max(longest, hours)
            flops = result["total_flops"]
            rows.append({"run": run, "measured": result["name"], "total_flops": flops, "gpu_hours": hours})
        out[plan] = {
            "runs": rows,
            "total_flops": total,
            "gpu_hours_1": one,
            # N GPUs: the runs are independent, so each GPU trains whole runs; the plan takes at
            # least its longest run, and the total divided over N at the assumed efficiency.
            "wall_hours": {
                str(n): max(longest, one / (n * (parallel_efficiency if n > 1 else 1.0))) for n in workers
            },
            "longest_run_hours": longest,
        }
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jarn_tf.bench_flops",
        description="FLOPs of one training step of each run (XLA HLO of its replica_step), its total "
        "and a projected GPU time.",
    )
    p.add_argument(
        "--flagfile",
        action="append",
        default=[],
        help="A run's flagfile (repeat for several). Default: every paper-scale run of the three papers.",
    )
    p.add_argument("--extra_flags", default="", help="Flags after each flagfile, e.g. --train_steps=10.")
    p.add_argument("--seeds", default="0", help="Training seeds of the paper-scale plans (default: one).")
    p.add_argument("--study_setups", type=int, default=55, help="Setups of gan_study --scale=paper (55).")
    p.add_argument("--output", default=None, help="Also write the results to this JSON file.")
    p.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Measure each run in its own Python process (default; --no-isolate: all in this one).",
    )
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child of --isolate
    p.add_argument(
        "--from_json",
        default=None,
        help="Reuse the runs measured in this JSON (an earlier --output) and measure only the others: "
        "other seeds or assumptions without tracing again.",
    )
    p.add_argument(
        "--peak_tflops",
        type=float,
        default=DEFAULT_PEAK_TFLOPS,
        help="Assumed GPU peak (default: A100 dense TF32, 156).",
    )
    p.add_argument(
        "--efficiency", type=float, default=DEFAULT_EFFICIENCY, help="Assumed sustained fraction of the peak."
    )
    p.add_argument(
        "--step_floor_ms",
        type=float,
        default=DEFAULT_STEP_FLOOR_MS,
        help="Assumed shortest step (ms) whatever its FLOPs: per-step overheads.",
    )
    p.add_argument(
        "--workers",
        default=",".join(map(str, DEFAULT_WORKERS)),
        help="GPU counts of the plans' wall-time projection.",
    )
    p.add_argument(
        "--parallel_efficiency",
        type=float,
        default=DEFAULT_PARALLEL_EFFICIENCY,
        help="Assumed efficiency of spreading a plan's runs over several GPUs.",
    )
    return p


def main(argv: Sequence[str], out: Callable[[str], None] = print) -> int:
    args = _parser().parse_args(list(argv))
    if args.one:  # a child of --isolate: one run, its result as JSON
        spec = json.loads(args.one)
        result = measure(spec["flagfile"] or None, spec["extra_flags"], name=spec["name"])
        with open(args.output, "w") as f:
            json.dump(result, f)
        return 0
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        workers = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        print("error: --seeds and --workers take comma-separated integers", file=sys.stderr)
        return 2
    if not 0 < args.efficiency <= 1 or args.peak_tflops <= 0 or not 0 < args.parallel_efficiency <= 1:
        print("error: --efficiency and --parallel_efficiency in (0, 1], --peak_tflops > 0", file=sys.stderr)
        return 2
    extra = tuple(shlex.split(args.extra_flags))
    tic = time.time()
    plans: Dict[str, List[Tuple[str, RunSpec]]] = {}
    measured_for: Dict[str, Dict[str, RunSpec]] = {}
    if args.flagfile:
        specs = [RunSpec(f, extra) for f in args.flagfile]
    else:
        plans, measured_for = paper_scale_runs(seeds, args.study_setups)
        plans = {p: [(r, s.plus(extra)) for r, s in runs] for p, runs in plans.items()}
        measured_for = {p: {r: s.plus(extra) for r, s in m.items()} for p, m in measured_for.items()}
        specs = [measured_for.get(p, {}).get(r, s) for p, runs in plans.items() for r, s in runs]
    unique = list(dict.fromkeys(specs))
    results: Dict[str, Dict[str, Any]] = {}
    known: Dict[str, Dict[str, Any]] = {}
    measured_by, measured_seconds = None, None
    if args.from_json:
        try:
            with open(args.from_json) as f:
                previous = json.load(f)
        except (OSError, ValueError) as e:
            print(f"error: --from_json={args.from_json}: {e}", file=sys.stderr)
            return 2
        known = {r["key"]: r for r in previous.get("runs", []) if "key" in r}
        measured_by = previous.get("measured_by") or previous.get("command")
        measured_seconds = previous.get("measurement_seconds") or previous.get("seconds")
    for i, spec in enumerate(unique):
        if spec.key in known:
            results[spec.key] = known[spec.key]
            continue
        try:
            if args.isolate:
                result = _measure_in_subprocess(spec)
            else:
                result = measure(spec.flagfile or None, spec.extra_flags, name=spec.label or spec.key)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {spec.label or spec.key}: {e}", file=sys.stderr)
            return 2
        result["key"] = spec.key
        results[spec.key] = result
        if args.output:  # progress, for --from_json after an interruption
            with open(args.output + ".partial", "w") as f:
                json.dump({"runs": list(results.values())}, f, indent=1)
        out(
            f"[{i + 1}/{len(unique)}] {result['name']}: {_fmt_flops(result['flops_per_step'])}FLOP/step x "
            f"{result['train_steps']} steps = {_fmt_flops(result['total_flops'])}FLOP ({result['seconds']} s)"
        )
    runs = list(results.values())
    out("")
    projection = Projection(args.peak_tflops, args.efficiency, args.step_floor_ms)
    for line in table_lines(runs, projection):
        out(line)
    totals = (
        plan_totals(
            plans, measured_for, results, projection, workers, args.parallel_efficiency
        )
        if plans
        else {}
    )
    if totals:
        out("")
        out("plan  runs  total FLOP  GPU h (1 GPU)  " + "  ".join(f"wall h ({n} GPUs)" for n in workers))
        for plan, t in totals.items():
            walls = "  ".join(f"{t['wall_hours'][str(n)]:.1f}" for n in workers)
            out(f"{plan}  {len(t['runs'])}  {_fmt_flops(t['total_flops'])}  {t['gpu_hours_1']:.1f}  {walls}")
    if args.output:
        import tensorflow as tf

        record = {
            "command": shlex.join(["python", "-m", "jarn_tf.bench_flops", *argv]),
            # The command that traced the runs, when this one reused its numbers (--from_json).
            "measured_by": measured_by if known else None,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "host": f"{platform.machine()}, {os.cpu_count()} CPU cores ({platform.platform()})",
            "tensorflow": tf.__version__,
            "method": METHOD,
            "assumptions": {
                "peak_tflops": args.peak_tflops,
                "peak_source": "NVIDIA A100 datasheet: dense TF32 tensor-core peak 156 TFLOPS (FP32 19.5, "
                "FP16/BF16 312)"
                if args.peak_tflops == DEFAULT_PEAK_TFLOPS
                else "given with --peak_tflops",
                "efficiency": args.efficiency,
                "step_floor_ms": args.step_floor_ms,
                "workers": workers,
                "parallel_efficiency": args.parallel_efficiency,
            },
            # Wall time of the tracing (of --from_json's command when it reused the runs).
            "measurement_seconds": measured_seconds if known else round(time.time() - tic, 1),
            "runs": runs,
            "run_gpu_hours": {r["key"]: projection.run_hours(r) for r in runs},
            "plans": totals,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
        out(f"Wrote {args.output}")
        if os.path.exists(args.output + ".partial"):
            os.remove(args.output + ".partial")
    return 0


def _measure_in_subprocess(spec: RunSpec) -> Dict[str, Any]:
    """``measure`` of ``spec`` in a fresh Python process (nothing of the previous runs' TensorFlow
    and Keras state left: one process measuring many runs once counted 0 FLOPs for a GAN step)."""
    import subprocess

    with tempfile.TemporaryDirectory(prefix="bench_flops_") as tmp:
        path = os.path.join(tmp, "run.json")
        one = json.dumps(
            {"flagfile": spec.flagfile, "extra_flags": list(spec.extra_flags), "name": spec.label or spec.key}
        )
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
        proc = subprocess.run(
            [sys.executable, "-m", "jarn_tf.bench.flops", f"--one={one}", f"--output={path}"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not os.path.exists(path):
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise ValueError(f"its measurement failed (exit status {proc.returncode}):\n{tail}")
        with open(path) as f:
            return json.load(f)


def run() -> None:
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    run()
