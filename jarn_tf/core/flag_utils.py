"""absl flag helpers shared by the entry points.

Fractions (``--eps=8/255``), and the flags generated from the config
sections of ``jarn_tf.config``: ``define_config_flags`` defines them,
``config_from_flags`` resolves them into an ``ExperimentConfig``.
"""

from __future__ import annotations

import dataclasses
import fractions
import sys
from typing import Any, Dict, List, Mapping, Optional

from absl import flags


def parse_fraction(text: str) -> float:
    """Parses ``0.031``, ``8/255`` or ``8 / 255`` to a float.

    Raises:
      ValueError: when the text is neither a number nor a fraction.
    """
    text = str(text).strip()
    if "/" in text:
        num, den = (part.strip() for part in text.split("/", 1))
        if float(den) == 0:
            raise ValueError(f"division by zero in {text!r}")
        return float(num) / float(den)
    return float(fractions.Fraction(text)) if text else float("nan")


class FractionParser(flags.FloatParser):
    """A float flag that also accepts fractions such as ``8/255``."""

    def convert(self, argument):
        if isinstance(argument, str):
            return parse_fraction(argument)
        return float(argument)

    def flag_type(self) -> str:
        return "float or fraction"


def define_fraction(
    name: str,
    default: Optional[float],
    help: str,
    lower_bound: Optional[float] = None,
    upper_bound: Optional[float] = None,
    flag_values: flags.FlagValues = flags.FLAGS,
) -> None:
    """Defines a float flag accepting fractions, with optional bounds."""
    flags.DEFINE(
        FractionParser(lower_bound=lower_bound, upper_bound=upper_bound),
        name,
        default,
        help,
        flag_values=flag_values,
    )


# ---------------------------------------------------------------------------
# Flags generated from the config sections (jarn_tf.config): one flag per
# section field, named like the field, with the field's help, choices and
# bounds. Entry points call ``define_config_flags`` and ``config_from_flags``.


class _TypedListParser(flags.ListParser):
    """A comma list whose items must parse as ``kind`` (int or float)."""

    def __init__(self, kind: type):
        super().__init__()
        self.kind = kind

    def parse(self, argument):
        items = super().parse(argument)
        for item in items:
            try:
                self.kind(item)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not a{'n' if self.kind is int else ''} {self.kind.__name__}"
                ) from None
        return items

    def flag_type(self) -> str:
        return f"comma-separated list of {self.kind.__name__}"


def _define_field_flag(field: dataclasses.Field, flag_values: flags.FlagValues) -> None:
    meta = field.metadata
    name, help = field.name, meta["help"]
    default = meta.get("flag_default", field.default)
    bounds = dict(lower_bound=meta.get("lower"), upper_bound=meta.get("upper"))
    if "choices" in meta:
        flags.DEFINE_enum(name, default, list(meta["choices"]), help, flag_values=flag_values)
    elif meta.get("fraction"):
        define_fraction(name, default, help, flag_values=flag_values, **bounds)
    elif "list_of" in meta:
        value = None if default is None else [str(v) for v in default]
        flags.DEFINE(
            _TypedListParser(meta["list_of"]),
            name,
            value,
            help,
            flag_values=flag_values,
            serializer=flags.CsvListSerializer(","),
        )
    elif field.type in ("bool", "Optional[bool]"):
        flags.DEFINE_bool(name, default, help, flag_values=flag_values)
    elif field.type == "int":
        flags.DEFINE_integer(name, default, help, flag_values=flag_values, **bounds)
    elif field.type == "float":
        flags.DEFINE_float(name, default, help, flag_values=flag_values, **bounds)
    elif field.type in ("str", "Optional[str]"):
        flags.DEFINE_string(name, default, help, flag_values=flag_values)
    else:
        raise TypeError(f"No flag type for config field {name}: {field.type}")


def flag_fields(section: type) -> List[dataclasses.Field]:
    """The fields of a config section that have a generated flag."""
    return [f for f in dataclasses.fields(section) if "help" in f.metadata and f.metadata.get("flag", True)]


def define_section_flags(section: type, flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines one flag per field of a config section (skipping those defined already)."""
    for field in flag_fields(section):
        if field.name not in flag_values:
            _define_field_flag(field, flag_values)


# Flags of define_config_flags that are not section fields.
_EXTRA_CONFIG_FLAGS = ("mode", "seed", "epochs", "mixed_precision", "mixed_precision_dtype")


def config_flag_names() -> List[str]:
    """Names of every flag ``define_config_flags`` defines."""
    from jarn_tf import config as config_lib

    names = list(_EXTRA_CONFIG_FLAGS)
    for section in list(config_lib.COMMON_SECTIONS.values()) + list(config_lib.MODE_SECTIONS.values()):
        names += [f.name for f in flag_fields(section) if f.name not in names]
    return names


def define_config_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the flags of every config section and of every mode.

    Besides the section fields: --mode, --seed, --epochs (instead of
    --train_steps) and --mixed_precision / --mixed_precision_dtype.
    """
    from jarn_tf import config as config_lib

    flags.DEFINE_enum(
        "mode", "classifier", sorted(config_lib.MODE_SECTIONS), "Training mode.", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "seed", 0, "Seed of initialisation, data order, noise and attacks.", flag_values=flag_values
    )
    for section in list(config_lib.COMMON_SECTIONS.values()) + list(config_lib.MODE_SECTIONS.values()):
        define_section_flags(section, flag_values)
    flags.DEFINE_float(
        "epochs",
        None,
        "Train for this many epochs instead of --train_steps.",
        lower_bound=0.0,
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "mixed_precision",
        False,
        "Mixed precision (see --mixed_precision_dtype); float32 weights and logits.",
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "mixed_precision_dtype",
        "auto",
        ["auto", "float16", "bfloat16"],
        "auto: float16 with loss scaling on GPU, bfloat16 on CPU/TPU.",
        flag_values=flag_values,
    )
    flags.register_multi_flags_validator(
        ["train_steps", "epochs"],
        lambda f: f["train_steps"] is None or f["epochs"] is None,
        message="Give --train_steps or --epochs, not both.",
        flag_values=flag_values,
    )


def _field_value(field: dataclasses.Field, value: Any) -> Any:
    kind = field.metadata.get("list_of")
    if kind is not None and value is not None:
        return tuple(kind(v) for v in value)
    return value


def section_from_flags(
    section: type,
    fv: flags.FlagValues,
    presets: Mapping[str, Any],
    mode_presets: Optional[Mapping[str, Any]] = None,
    **fixed: Any,
) -> Any:
    """Builds a config section from the flags named like its fields.

    A flag left at None takes ``presets[name]`` (the paper's value for the
    dataset); then the section's ``derive`` (if any) fills defaults that
    follow from other flags.

    Args:
      section: the section's dataclass.
      fv: the parsed flags.
      presets: per-dataset defaults for flags left unset.
      mode_presets: the mode's values for flags not given at all
        (``config.MODE_PRESETS``), which win over the flag's default.
      **fixed: values of fields that have no generated flag.

    Returns:
      The section.
    """
    values = {}
    mode_presets = mode_presets or {}
    for field in flag_fields(section):
        if field.name in mode_presets and not fv[field.name].present:
            values[field.name] = mode_presets[field.name]
            continue
        value = _field_value(field, fv[field.name].value)
        if value is None and field.name in presets:
            value = presets[field.name]
        values[field.name] = value
    values.update(fixed)
    derive = getattr(section, "derive", None)
    if derive is not None:
        values = derive(values)
    return section(**values)


def check_mode_flags(fv: flags.FlagValues) -> None:
    """Refuses flags given on the command line that mean nothing in ``--mode``.

    A flag of another mode's section (``--jarn`` with ``--mode=gan``) or a
    common flag the mode does not use (``config.MODE_UNUSED_FLAGS``, e.g.
    ``--momentum`` with Adam-trained GANs) would otherwise be silently ignored.

    Raises:
      ValueError: naming the flags and the mode.
    """
    from jarn_tf import config as config_lib

    mode = fv.mode
    own = {f.name for f in flag_fields(config_lib.mode_section_class(mode))}
    for section in config_lib.COMMON_SECTIONS.values():
        own |= {f.name for f in flag_fields(section)}
    others: Dict[str, List[str]] = {}  # flag -> the other modes that use it
    for other, section in config_lib.MODE_SECTIONS.items():
        if other == mode:
            continue
        for f in flag_fields(section):
            if f.name not in own and fv[f.name].present:
                others.setdefault(f.name, []).append(other)
    foreign = [f"--{name} (--mode={'|'.join(modes)})" for name, modes in others.items()]
    foreign += [f"--{name}" for name in config_lib.MODE_UNUSED_FLAGS.get(mode, ()) if fv[name].present]
    if foreign:
        reasons = config_lib.MODE_FOREIGN_FLAG_REASONS.get(mode, {})
        why = list(dict.fromkeys(reasons[name] for name in others if name in reasons))
        raise ValueError(
            f"--mode={mode} does not use {', '.join(foreign)}; drop them" + "".join(f". {r}" for r in why)
        )


def config_from_flags(fv: flags.FlagValues = flags.FLAGS):
    """Resolves the flags of ``define_config_flags`` into an ExperimentConfig.

    Flags left unset take the paper's setting for the dataset
    (``config.PAPER_DEFAULTS``) or, where documented, follow other flags.
    ``--epochs`` reads the training split to count its steps.

    Args:
      fv: the parsed flags.

    Returns:
      The resolved (not yet validated) configuration.
    """
    from jarn_tf import config as config_lib

    check_mode_flags(fv)
    presets = config_lib.PAPER_DEFAULTS[fv.dataset]
    mode_presets = config_lib.MODE_PRESETS.get(fv.mode, {})
    data_cfg = section_from_flags(config_lib.DataConfig, fv, presets, mode_presets)
    batch_size = fv.batch_size if fv["batch_size"].present else mode_presets.get("batch_size", fv.batch_size)
    train_steps = fv.train_steps
    if fv.epochs is not None:
        from jarn_tf.core import data  # loads the training split to count it

        train_steps = max(1, int(round(fv.epochs * data.steps_per_epoch(data_cfg, batch_size))))
    if train_steps is None:
        train_steps = config_lib.OptimizerConfig.train_steps
    return config_lib.ExperimentConfig(
        mode=fv.mode,
        seed=fv.seed,
        data=data_cfg,
        model=section_from_flags(
            config_lib.ModelConfig,
            fv,
            presets,
            mixed_precision=fv.mixed_precision_dtype if fv.mixed_precision else "none",
        ),
        optimizer=section_from_flags(
            config_lib.OptimizerConfig, fv, presets, mode_presets, train_steps=train_steps
        ),
        runtime=section_from_flags(config_lib.RuntimeConfig, fv, presets, mode_presets),
        mode_config=section_from_flags(config_lib.mode_section_class(fv.mode), fv, presets),
    )


def help_for_console_script(module_name: str, doc: Optional[str]) -> None:
    """Makes absl's ``--help`` show a command's docstring and flags under its console script.

    absl's ``--help`` prints the docstring of ``__main__`` and the key flags of the module at
    ``sys.argv[0]``. Under ``python -m jarn_tf.train`` that is the command's module; under the
    console script (``jarn-train``) it is the wrapper pip wrote, which has neither, so ``--help``
    printed only a usage line. Call from the console-script entry point after defining the flags.

    Args:
      module_name: the command's module (``__name__`` of ``jarn_tf.train``...).
      doc: its docstring.
    """
    main = sys.modules.get("__main__")
    if main is not None and not getattr(main, "__doc__", None) and doc:
        main.__doc__ = doc
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
