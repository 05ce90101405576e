"""Configuration: the name tables and one frozen dataclass per concern.

Only the entry points (``jarn_tf/train.py``, ...) read absl flags; they build
an ``ExperimentConfig`` and pass it down. A config has one section per
concern, each of which checks itself in one place (``validate``):

  data       where the data comes from and how it is fed (``DataConfig``)
  model      the architecture of every network (``ModelConfig``)
  optimizer  how long, how big a batch, and at which learning rate
             (``OptimizerConfig``)
  runtime    how the run is carried out; every field may change when a run
             is resumed (``RuntimeConfig``)
  <mode>     the training mode's own section, e.g. ``classifier``
             (``ClassifierConfig``); ``MODE_SECTIONS`` maps mode names to
             their section class.

Every section field is also a flag of the same name: its help text, choices
and bounds are in the field's metadata (see ``flag_field``), and
``jarn_tf.core.flag_utils`` turns them into absl flags, so each hyperparameter is
spelled out once. Nothing here imports TensorFlow: a config can be written to
``model_dir/config.json``, read back and compared on resume anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, ClassVar, Dict, FrozenSet, List, Optional, Tuple

# ---------------------------------------------------------------------------
# Name tables: the one place each list of choices is spelled out.

DATASETS = ("mnist", "fashion_mnist", "svhn", "cifar10")
MODELS = ("wrn", "mnist_cnn")
JACOBIAN_KINDS = ("xent", "prob")
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
# Strategies that configure the runtime, so they are built before any other op.
CLUSTER_STRATEGIES = ("multi_worker", "tpu")
MIXED_PRECISION = ("none", "auto", "float16", "bfloat16")
DISC_OPTIMIZERS = ("sgd", "adam")
# How the JARN step is run: ``paper`` follows Algorithm 1; ``release`` runs as
# the authors' TensorFlow 1 release did; ``release_intended`` is the release
# without its input-feed slip (see ``ClassifierConfig.jarn_variant``).
JARN_VARIANTS = ("paper", "release", "release_intended")
JARN_GENERATOR_LOSSES = ("minimax", "non_saturating")
# Values each JARN variant gives the flags left unset.
JARN_VARIANT_DEFAULTS = {
    "paper": dict(jacobian="xent", jarn_start=0.75),
    "release": dict(jacobian="prob", jarn_start=0.875),
    "release_intended": dict(jacobian="prob", jarn_start=0.875),
}

# The ``gan`` mode (``GANConfig``): losses f of eq. 1 of Zhou & Kraehenbuehl
# (ICLR 2019), generator objectives, discriminator regularisers, the attacks
# that AR and RFM defend against, and what they regularise (Appendix D).
GAN_LOSSES = ("gan", "lsgan", "wgan")
GAN_GENERATOR_LOSSES = ("minimax", "non_saturating")
DISC_REGULARIZERS = ("none", "instance_noise", "gradient_penalty", "ar", "rfm")
REG_ATTACKS = ("fgm", "fgsm", "pgd", "cw")
# Splits of the classifier score (and IS) wherever it is reported: the mean over 10 parts of the
# samples, as the Inception Score is (jarn_tf.evaluate_gan and the training-time eval/classifier_score).
CLASSIFIER_SCORE_SPLITS = 10
REG_TARGETS = ("discriminator", "loss")
# Architecture options of the gan mode's networks (``jarn_tf.gan.models``), for the
# random setups of the paper's Table 2 ("network blocks (vanilla convolution,
# ResNet) ... nonlinearities (ReLU, Leaky ReLU, Tanh) and normalizations
# (BatchNorm, InstanceNorm, none)"). Here, not in ``jarn_tf.gan.models``, so that this
# module needs no Keras; ``jarn_tf.gan.models`` imports them. ``paper`` (flags only):
# Appendix C's choice, which differs between the generator and the
# discriminator.
GAN_BLOCKS = ("resnet", "vanilla")
GAN_ACTIVATIONS = ("relu", "leaky_relu", "tanh")
GAN_NORMS = ("batch", "instance", "none")
GAN_PAPER_OPTION = "paper"

# The registry of training modes, filled by ``register_mode`` where each mode's
# section is defined: mode name -> its config section; the values it gives the
# common sections' flags left unset; the common-section flags that mean
# nothing in it (giving one is an error); and why it refuses another mode's
# flags where the flag's name does not say it.
MODE_SECTIONS: Dict[str, type] = {}
MODE_PRESETS: Dict[str, Dict[str, Any]] = {}
MODE_UNUSED_FLAGS: Dict[str, Tuple[str, ...]] = {}
MODE_FOREIGN_FLAG_REASONS: Dict[str, Dict[str, str]] = {}


def register_mode(
    *names: str,
    presets: Optional[Dict[str, Any]] = None,
    unused_flags: Tuple[str, ...] = (),
    foreign_flag_reasons: Optional[Dict[str, str]] = None,
):
    """Class decorator: registers a mode's config section under ``names`` (the first the mode's
    name, the others aliases), with its presets, unused common flags and refusal reasons.

    Raises:
      ValueError: a name registered twice.
    """

    def register(section: type) -> type:
        for name in names:
            if name in MODE_SECTIONS:
                raise ValueError(f"mode {name!r} is registered twice ({MODE_SECTIONS[name].__name__})")
            MODE_SECTIONS[name] = section
            if presets:
                MODE_PRESETS[name] = dict(presets)
            if unused_flags:
                MODE_UNUSED_FLAGS[name] = tuple(unused_flags)
            if foreign_flag_reasons:
                MODE_FOREIGN_FLAG_REASONS[name] = dict(foreign_flag_reasons)
        return section

    return register


# Common-section flags that the GAN modes do not use (they build their own networks).
_GAN_UNUSED = (
    "momentum",
    "model",
    "wrn_depth",
    "wrn_width",
    "cnn_channels",
    "disc_layers",
    "disc_base_channels",
    "standardize_input",
    "sync_batchnorm",
)

# Settings per dataset, used for flags left unset: the paper's (section 4) for
# mnist, svhn and cifar10. fashion_mnist is not in the paper: it takes the
# paper's MNIST settings with our eps 0.1 (0.3 destroys Fashion-MNIST's
# classes: the eps the robustness literature uses for it is 0.1).
PAPER_DEFAULTS = {
    "mnist": dict(
        model="mnist_cnn", disc_layers=2, disc_base_channels=64, disc_update_every=10, lambda_adv=1.0, eps=0.3
    ),
    "fashion_mnist": dict(
        model="mnist_cnn", disc_layers=2, disc_base_channels=64, disc_update_every=10, lambda_adv=1.0, eps=0.1
    ),
    "svhn": dict(
        model="wrn", disc_layers=5, disc_base_channels=16, disc_update_every=20, lambda_adv=5.0, eps=8 / 255
    ),
    "cifar10": dict(
        model="wrn", disc_layers=5, disc_base_channels=32, disc_update_every=20, lambda_adv=1.0, eps=8 / 255
    ),
}


def flag_field(default: Any, help: str, **flag: Any) -> Any:
    """A section field that is also a flag of the same name.

    Args:
      default: the field's default (what a config built in code gets).
      help: the flag's help text (the field's documentation).
      **flag: how the flag is defined: ``choices`` (an enum flag),
        ``fraction=True`` (a float that also accepts ``8/255``),
        ``list_of=int|float`` (a comma list for a tuple field),
        ``lower``/``upper`` (bounds), ``flag_default`` (the flag's default
        when it differs from the field's, e.g. None for "the paper's value
        for the dataset" or "derived from another flag") and ``flag=False``
        (no generated flag: the entry point defines it by hand).

    Returns:
      A ``dataclasses.field``.
    """
    return dataclasses.field(default=default, metadata={"help": help, **flag})


def image_fraction(default: float, help: str) -> Any:
    """A field in [0, 1] image units whose flag takes fractions (``8/255``) and
    defaults to None (the paper's value for the dataset, or one derived from
    other flags)."""
    return flag_field(default, help, fraction=True, lower=0.0, upper=1.0, flag_default=None)


def _check(checks: List[Tuple[bool, str]]) -> None:
    """Raises ValueError with the message of the first failed check."""
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is fed."""

    RESUMABLE: ClassVar[FrozenSet[str]] = frozenset({"data_dir", "download"})

    dataset: str = flag_field("cifar10", "Dataset to train on.", choices=DATASETS)
    data_dir: Optional[str] = flag_field(
        None, "TFDS data directory, or a directory with MNIST-format IDX files. Default: TFDS's."
    )
    download: bool = flag_field(True, "Let TFDS download the data when it has no copy.")
    augment: Optional[bool] = flag_field(None, "Pad-crop-flip augmentation. Default: on for cifar10 only.")

    def validate(self) -> None:
        _check([(self.dataset in DATASETS, f"--dataset must be one of {DATASETS}, got {self.dataset!r}")])


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture (and numeric precision) of every network of a run.

    Shape-dependent rules (e.g. discriminator depth against the image size)
    are checked by ``jarn_tf.jarn.models.validate_model_config``.
    """

    RESUMABLE: ClassVar[FrozenSet[str]] = frozenset()

    model: str = flag_field(
        "wrn",
        "Classifier. Default: mnist_cnn for (fashion_)mnist, wrn otherwise.",
        choices=MODELS,
        flag_default=None,
    )
    wrn_depth: int = flag_field(34, "Wide-ResNet depth, 6n+4 (34: 5 units per stage, the paper's).", lower=10)
    wrn_width: int = flag_field(10, "Wide-ResNet widening factor (10: widths 160, 320, 640).", lower=1)
    cnn_channels: Tuple[int, ...] = flag_field(
        (64, 128, 256), "Channels of the MNIST CNN's conv layers.", list_of=int
    )
    disc_layers: int = flag_field(
        5, "Discriminator conv layers. Default: 2 (MNIST), 5 (SVHN, CIFAR-10).", lower=1, flag_default=None
    )
    disc_base_channels: int = flag_field(
        32,
        "Discriminator's first-layer channels. Default: 64 MNIST, 16 SVHN, 32 CIFAR-10.",
        lower=1,
        flag_default=None,
    )
    sync_batchnorm: bool = flag_field(False, "Batch-norm statistics over all replicas.")
    standardize_input: bool = flag_field(
        True,
        "The classifier standardises each image first (subtract its mean, divide by its L2 norm), as the "
        "release. This makes J exactly orthogonal to x; --nostandardize_input feeds [0, 1] pixels as they are.",
    )
    # Set by the entry point from --mixed_precision and --mixed_precision_dtype.
    mixed_precision: str = flag_field(
        "none", "Dtype policy of every network: none, auto, float16 or bfloat16.", flag=False
    )

    def validate(self) -> None:
        _check(
            [
                (self.model in MODELS, f"--model must be one of {', '.join(MODELS)}, got {self.model!r}"),
                (
                    self.mixed_precision in MIXED_PRECISION,
                    f"--mixed_precision_dtype must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}",
                ),
            ]
        )


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Length of the run, batch size and the learning-rate schedule.

    All networks use SGD with this schedule unless their mode says otherwise
    (e.g. ``--disc_optimizer=adam``).
    """

    RESUMABLE: ClassVar[FrozenSet[str]] = frozenset()

    train_steps: int = flag_field(
        160000, "Training steps. Default: 160000 (the paper's CIFAR-10 run).", lower=1, flag_default=None
    )
    batch_size: int = flag_field(64, "Global batch size.", lower=1)
    learning_rate: float = flag_field(0.1, "Base learning rate (SGD, every network).")
    lr_boundaries: Tuple[float, ...] = flag_field(
        (0.5, 0.75), "Fractions of training where the learning rate decays.", list_of=float
    )
    lr_decay: float = flag_field(0.1, "Learning-rate multiplier at each boundary.")
    momentum: float = flag_field(0.9, "SGD momentum.")
    weight_decay: float = flag_field(2e-4, "Coefficient of sum(w^2)/2 over kernels.", lower=0.0)

    def validate(self) -> None:
        b = self.lr_boundaries
        _check(
            [
                (self.train_steps > 0, f"--train_steps must be positive, got {self.train_steps}"),
                (self.batch_size > 0, f"--batch_size must be positive, got {self.batch_size}"),
                (self.learning_rate > 0, f"--learning_rate must be positive, got {self.learning_rate}"),
                (self.weight_decay >= 0, f"--weight_decay must be >= 0, got {self.weight_decay}"),
                (
                    all(0.0 < x < 1.0 for x in b) and list(b) == sorted(b),
                    f"--lr_boundaries must be increasing fractions in (0, 1), got {b}",
                ),
            ]
        )


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """How a run is carried out; none of it changes what is trained.

    Every field may differ between a run and its resumption.
    """

    steps_per_loop: int = flag_field(50, "Steps per compiled loop between host work.", lower=1)
    checkpoint_every: int = flag_field(1000, "Steps between checkpoints.", lower=1)
    summary_every: int = flag_field(100, "Steps between scalar summaries.", lower=1)
    image_summary_every: int = flag_field(1000, "Steps between image summaries (x, J, J'); 0 = off.", lower=0)
    export_every: int = flag_field(0, "Steps between exports; 0 = only at the end.", lower=0)
    keep_checkpoints: int = flag_field(3, "Checkpoints kept.", lower=1)
    strategy: str = flag_field(
        "default",
        "tf.distribute strategy: mirrored = the GPUs of this machine; multi_worker = "
        "MultiWorkerMirroredStrategy over the workers of TF_CONFIG; tpu = TPUStrategy.",
        choices=STRATEGIES,
    )
    num_gpus: int = flag_field(0, "GPUs for --strategy=mirrored; 0 = all.", lower=0)
    deterministic: bool = flag_field(
        False, "Op determinism: two runs with the same flags give bit-identical weights (CPU)."
    )
    jit_compile: bool = flag_field(False, "Compile the training step with XLA.")
    eval_every: int = flag_field(
        -1,
        "Steps between evaluations on the first --eval_examples test images (clean and PGD accuracy "
        "for classifiers), logged under eval/ in TensorBoard; -1: four times per run; 0: only at export.",
        lower=-1,
    )
    eval_pgd_steps: int = flag_field(
        10, "PGD steps of the evaluations (step eps/4, random start); 0: clean accuracy only.", lower=0
    )
    eval_pgd_examples: int = flag_field(
        256,
        "Test images attacked by the evaluations' PGD (the first of the --eval_examples); PGD costs "
        "--eval_pgd_steps forward and backward passes per image.",
        lower=1,
    )

    def eval_interval(self, train_steps: int) -> int:
        """Steps between evaluations (0: none before the export)."""
        if self.eval_every < 0:
            return max(1, -(-train_steps // 4))
        return self.eval_every

    def validate(self) -> None:
        _check(
            [
                (
                    self.strategy in STRATEGIES,
                    f"--strategy must be one of {STRATEGIES}, got {self.strategy!r}",
                ),
                (self.steps_per_loop >= 1, f"--steps_per_loop must be >= 1, got {self.steps_per_loop}"),
                (self.checkpoint_every >= 1, f"--checkpoint_every must be >= 1, got {self.checkpoint_every}"),
                (self.summary_every >= 1, f"--summary_every must be >= 1, got {self.summary_every}"),
                (self.export_every >= 0, f"--export_every must be >= 0, got {self.export_every}"),
                (self.eval_every >= -1, f"--eval_every must be >= -1, got {self.eval_every}"),
                (self.eval_pgd_steps >= 0, f"--eval_pgd_steps must be >= 0, got {self.eval_pgd_steps}"),
                (
                    self.eval_pgd_examples >= 1,
                    f"--eval_pgd_examples must be >= 1, got {self.eval_pgd_examples}",
                ),
            ]
        )


# Every runtime field may change on resume.
RuntimeConfig.RESUMABLE = frozenset(f.name for f in dataclasses.fields(RuntimeConfig))


# ---------------------------------------------------------------------------
# Robust-discriminator regularisers (Zhou & Kraehenbuehl, ICLR 2019): the
# gan mode's, also offered to JARN's discriminator (``--jarn``) and to the
# AdvGAN discriminator's source head. One definition, so the flags (one per
# name) have the same help, choices and bounds in every mode.

# Fields whose flag may only be given with these regularisers.
DISC_REG_FIELDS: Dict[str, Tuple[str, ...]] = {
    "reg_weight": ("ar", "rfm"),
    "reg_delta": ("ar", "rfm"),
    "reg_attack": ("ar", "rfm"),
    "rfm_alpha": ("rfm",),
    "gp_weight": ("gradient_penalty",),
    "noise_sigma": ("instance_noise",),
}


def _gan_fields() -> Dict[str, Any]:
    """Field definitions shared by the GAN sections (``gan``, ``advgan``): one flag each."""
    return dict(
        latent_dim=flag_field(128, "Dimension of the latent z ~ N(0, I) (paper: 128).", lower=1),
        gan_channels=flag_field(
            128, "Channels of every layer of the generator and discriminator (paper: 128).", lower=1
        ),
        adam_beta1=flag_field(0.0, "Adam beta1 of both networks (paper: 0).", lower=0.0, upper=1.0),
        adam_beta2=flag_field(0.9, "Adam beta2 of both networks (paper: 0.9).", lower=0.0, upper=1.0),
        fcd_network=flag_field(
            None,
            "A classifier export of this project trained on the same dataset: the evaluations log its "
            "Frechet distance (eval/fcd) and classifier score. Not FID: see jarn_tf.evaluate_gan.",
        ),
        fcd_samples=flag_field(
            5000,
            "Samples (and first test images) of the evaluations' FCD; more than the feature dimension.",
            lower=2,
        ),
    )


def _disc_reg_fields() -> Dict[str, Any]:
    """Field definitions of the discriminator regularisers (GAN, classifier/JARN, AdvGAN sections)."""
    return dict(
        disc_reg=flag_field(
            "none",
            "Regulariser of the discriminator: none; instance_noise (Gaussian noise on every discriminator "
            "input); gradient_penalty (WGAN-GP on interpolates, weight from U(0, 1)); ar (eq. 4: "
            "(D(G(z)) - D(G(z) + v))^2); rfm (eq. 5: ||phi(G(z)) - phi(G(z) + v)||^2 + alpha ||w||^2 on the "
            "penultimate features).",
            choices=DISC_REGULARIZERS,
        ),
        reg_weight=flag_field(
            10.0,
            "lambda of --disc_reg=ar or rfm (not in the paper; ours: 10). Only with ar or rfm.",
            lower=0.0,
            flag_default=None,
        ),
        reg_delta=flag_field(
            0.05,
            "Radius of the attack of ar / rfm in [0, 1] image units: L2 for fgm, pgd and cw (paper: 0.05), "
            "L-inf for fgsm. Only with ar or rfm.",
            lower=0.0,
            flag_default=None,
        ),
        rfm_alpha=flag_field(
            1e-4,
            "alpha of --disc_reg=rfm, the weight of ||w||^2 (paper: 1e-4). Only with rfm.",
            lower=0.0,
            flag_default=None,
        ),
        reg_attack=flag_field(
            "fgm",
            "The attack v of ar / rfm on generated images (held constant: no gradient through it). fgm: the "
            "fast normalised gradient delta * g / ||g||_2 of D (paper); fgsm: delta * sign(g); pgd: L2 PGD on "
            "the regulariser's own distance, from the fgm point; cw: Carlini-Wagner-style ascent on "
            "distance - ||v||^2 / delta^2 (Appendix F). Only with ar or rfm.",
            choices=REG_ATTACKS,
            flag_default=None,
        ),
        reg_attack_steps=flag_field(
            5, "Steps of --reg_attack=pgd or cw (only with them).", lower=1, flag_default=None
        ),
        reg_target=flag_field(
            "discriminator",
            "What ar / gradient_penalty / rfm make robust: the discriminator's output D (section 4) or the "
            "loss f(D) of generated images (Appendix D, the robust loss; for rfm the attack follows the "
            "gradient of f(D), the features penalised are the same).",
            choices=REG_TARGETS,
        ),
        gp_weight=flag_field(
            10.0,
            "Weight of --disc_reg=gradient_penalty (WGAN-GP's 10). Only with it.",
            lower=0.0,
            flag_default=None,
        ),
        gp_target=flag_field(
            1.0, "Target gradient norm of the penalty: (||grad|| / target - 1)^2 (as TF-GAN).", lower=1e-6
        ),
        noise_sigma=flag_field(
            0.1,
            "Std of the Gaussian instance noise in [0, 1] image units (not in the paper; ours: 0.1). Only with "
            "--disc_reg=instance_noise.",
            lower=0.0,
            flag_default=None,
        ),
    )


def _derive_disc_reg(out: Dict[str, Any]) -> Dict[str, Any]:
    """Refuses regulariser flags given without their regulariser, then fills their defaults (in place).

    Raises:
      ValueError: naming the flag and the --disc_reg it needs.
    """
    reg = out.get("disc_reg") or "none"
    defaults = {name: f.default for name, f in _disc_reg_fields().items()}
    for name, regs in DISC_REG_FIELDS.items():
        if out.get(name) is not None and reg not in regs:
            raise ValueError(f"--{name} applies to --disc_reg={' or '.join(regs)} only, not --disc_reg={reg}")
        if out.get(name) is None:
            out[name] = defaults[name]
    if out.get("reg_attack_steps") is not None and out["reg_attack"] not in ("pgd", "cw"):
        raise ValueError(
            f"--reg_attack_steps applies to --reg_attack=pgd or cw only, not --reg_attack={out['reg_attack']}"
        )
    if out.get("reg_attack_steps") is None:
        out["reg_attack_steps"] = defaults["reg_attack_steps"]
    return out


def _disc_reg_checks(section: Any) -> List[Tuple[bool, str]]:
    """The checks of the regulariser fields of ``section``."""
    return [
        (
            section.disc_reg in DISC_REGULARIZERS,
            f"--disc_reg must be one of {DISC_REGULARIZERS}, got {section.disc_reg!r}",
        ),
        (section.reg_attack in REG_ATTACKS, f"--reg_attack must be one of {REG_ATTACKS}"),
        (section.reg_target in REG_TARGETS, f"--reg_target must be one of {REG_TARGETS}"),
        (
            section.reg_target == "discriminator" or section.disc_reg in ("ar", "gradient_penalty", "rfm"),
            "--reg_target=loss (Appendix D's robust loss) applies to --disc_reg=ar, gradient_penalty or "
            f"rfm, not --disc_reg={section.disc_reg}",
        ),
        (section.reg_delta > 0, f"--reg_delta must be positive, got {section.reg_delta}"),
        (section.reg_weight >= 0, f"--reg_weight must be >= 0, got {section.reg_weight}"),
        (section.gp_weight >= 0, f"--gp_weight must be >= 0, got {section.gp_weight}"),
        (section.noise_sigma >= 0, f"--noise_sigma must be >= 0, got {section.noise_sigma}"),
    ]


@register_mode("classifier")
@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """The ``classifier`` mode: standard training and its regularisers.

    Standard training, uniform noise, adversarial training (FGSM / PGD),
    double backpropagation and JARN, alone or combined. All image-space
    quantities (eps, step sizes, noise) are in [0, 1] units.
    """

    RESUMABLE: ClassVar[FrozenSet[str]] = frozenset()

    # JARN.
    jarn: bool = flag_field(False, "Train with the JARN regulariser.")
    jarn_variant: str = flag_field(
        "paper",
        "How the JARN step runs. paper: Algorithm 1 (noise only in the JARN phase; the discriminator's real "
        "images are the noisy x; one forward pass for all three updates). release: as the authors' code "
        "ran (noise on every step of the run; the discriminator updated in a second pass after the "
        "classifier and adaptor; J = d softmax_y/dx and JARN in the last 12.5% unless set; and the "
        "classifier's layers after the standardisation trained on raw 0-255 pixels, as its feed dict did). "
        "release_intended: release without that last feed slip.",
        choices=JARN_VARIANTS,
    )
    jarn_start: float = flag_field(
        0.75,
        "Fraction of training after which JARN is on (0 = always). Default: 0.75 (paper: last 25%), "
        "0.875 with --jarn_variant=release (its 140k of 160k steps).",
        flag_default=None,
    )
    lambda_adv: float = flag_field(
        1.0, "Weight of JARN's adversarial loss. Default: 1 (MNIST, CIFAR-10), 5 (SVHN).", flag_default=None
    )
    adaptor_gamma: float = flag_field(1.0, "Weight of the adversarial loss in the adaptor's objective.")
    disc_update_every: int = flag_field(
        20,
        "Update the discriminator every k steps. Default: 10 MNIST, 20 otherwise.",
        lower=1,
        flag_default=None,
    )
    jacobian: str = flag_field(
        "xent",
        "J = d xent/dx (paper) or d softmax_y/dx (authors' release). Default: the --jarn_variant's.",
        choices=JACOBIAN_KINDS,
        flag_default=None,
    )
    jarn_generator_loss: str = flag_field(
        "minimax",
        "What the classifier and adaptor minimise against the discriminator. minimax: L_adv (paper eq. 9), "
        "whose gradient vanishes once the discriminator wins; non_saturating: -log D(J')/2.",
        choices=JARN_GENERATOR_LOSSES,
    )
    disc_optimizer: str = flag_field("sgd", "Discriminator optimizer.", choices=DISC_OPTIMIZERS)
    disc_learning_rate: float = flag_field(1e-3, "Discriminator learning rate with --disc_optimizer=adam.")
    # Adversarial training and baselines.
    at_steps: int = flag_field(0, "PGD steps of adversarial training; 0 off, 1 FGSM-AT, 7 PGD-AT7.", lower=0)
    eps: float = image_fraction(
        8.0 / 255.0,
        "L-inf radius in [0, 1] units, e.g. 8/255. Default: 0.3 MNIST, 0.1 Fashion-MNIST, 8/255 otherwise.",
    )
    step_size: float = image_fraction(
        2.0 / 255.0,
        "PGD step size. Default: eps for --at_steps=1, eps/4 otherwise.",
    )
    at_random_start: bool = flag_field(
        True, "Random start for training PGD. Default: on unless --at_steps=1.", flag_default=None
    )
    at_eps_warmup: float = flag_field(
        0.0,
        "Fraction of training over which the training attack's eps (and step size) grow linearly from 0 "
        "to --eps; 0 = full eps from the first step. Adversarial training from scratch can stall at the "
        "constant classifier (PGD-AT7 on Fashion-MNIST at eps 0.1 does); a warm-up avoids it.",
        lower=0.0,
        upper=1.0,
    )
    uniform_noise: bool = flag_field(False, "Uniform-noise augmentation baseline.")
    noise_eps: float = image_fraction(
        8.0 / 255.0,
        "Half-width of the uniform input noise (JARN, --uniform_noise). Default: --eps.",
    )
    double_backprop: float = flag_field(
        0.0, "Weight of the input-gradient Frobenius penalty; 0 = off.", lower=0.0
    )
    # The gan mode's robust-discriminator regularisers on JARN's discriminator
    # (--jarn only): score s = logit_fake - logit_real, generated = J'.
    disc_reg: str = _disc_reg_fields()["disc_reg"]
    reg_weight: float = _disc_reg_fields()["reg_weight"]
    reg_delta: float = _disc_reg_fields()["reg_delta"]
    rfm_alpha: float = _disc_reg_fields()["rfm_alpha"]
    reg_attack: str = _disc_reg_fields()["reg_attack"]
    reg_attack_steps: int = _disc_reg_fields()["reg_attack_steps"]
    reg_target: str = _disc_reg_fields()["reg_target"]
    gp_weight: float = _disc_reg_fields()["gp_weight"]
    gp_target: float = _disc_reg_fields()["gp_target"]
    noise_sigma: float = _disc_reg_fields()["noise_sigma"]

    @staticmethod
    def derive(values: Dict[str, Any]) -> Dict[str, Any]:
        """Fills the flags whose default follows from other flags.

        Args:
          values: field name -> flag value, None where the flag was left
            unset (after the per-dataset paper defaults were applied).

        Returns:
          ``values`` with jacobian and jarn_start (from the JARN variant),
          step_size, at_random_start and noise_eps resolved.
        """
        out = dict(values)
        if (out.get("disc_reg") or "none") != "none" and not out.get("jarn"):
            raise ValueError(
                f"--disc_reg={out['disc_reg']} regularises JARN's discriminator: it needs --jarn "
                "(or --mode=gan / --mode=advgan)"
            )
        _derive_disc_reg(out)
        variant = out.get("jarn_variant") or "paper"
        for name, value in JARN_VARIANT_DEFAULTS[variant].items():
            if out.get(name) is None:
                out[name] = value
        if out["step_size"] is None:
            out["step_size"] = out["eps"] if out["at_steps"] == 1 else out["eps"] / 4
        if out["at_random_start"] is None:
            out["at_random_start"] = out["at_steps"] != 1
        if out["noise_eps"] is None:
            out["noise_eps"] = out["eps"]
        return out

    def jarn_start_step(self, train_steps: int) -> int:
        """First step at which the JARN regulariser is active."""
        return int(round(self.jarn_start * train_steps)) if self.jarn else train_steps

    def validate(self, config: "ExperimentConfig") -> None:
        train_steps = config.optimizer.train_steps
        _check(
            _disc_reg_checks(self)
            + [
                (
                    self.disc_reg == "none" or self.jarn,
                    f"--disc_reg={self.disc_reg} regularises JARN's discriminator: it needs --jarn",
                ),
                (self.at_steps >= 0, f"--at_steps must be >= 0, got {self.at_steps}"),
                (
                    0.0 <= self.eps <= 1.0,
                    f"--eps must be in [0, 1] (pixel units of [0, 1] images), got {self.eps}",
                ),
                (0.0 <= self.step_size <= 1.0, f"--step_size must be in [0, 1], got {self.step_size}"),
                (0.0 <= self.noise_eps <= 1.0, f"--noise_eps must be in [0, 1], got {self.noise_eps}"),
                (0.0 <= self.jarn_start < 1.0, f"--jarn_start must be in [0, 1), got {self.jarn_start}"),
                (
                    self.disc_update_every >= 1,
                    f"--disc_update_every must be >= 1, got {self.disc_update_every}",
                ),
                (self.double_backprop >= 0, f"--double_backprop must be >= 0, got {self.double_backprop}"),
                (self.lambda_adv >= 0, f"--lambda_adv must be >= 0, got {self.lambda_adv}"),
                (
                    0.0 <= self.at_eps_warmup <= 1.0,
                    f"--at_eps_warmup must be in [0, 1], got {self.at_eps_warmup}",
                ),
                (
                    self.at_eps_warmup == 0 or self.at_steps > 0,
                    "--at_eps_warmup needs adversarial training (--at_steps > 0)",
                ),
                (
                    self.jarn_variant in JARN_VARIANTS,
                    f"--jarn_variant must be one of {JARN_VARIANTS}, got {self.jarn_variant!r}",
                ),
                (
                    self.jarn_generator_loss in JARN_GENERATOR_LOSSES,
                    f"--jarn_generator_loss must be one of {JARN_GENERATOR_LOSSES}, got {self.jarn_generator_loss!r}",
                ),
                (
                    self.jacobian in JACOBIAN_KINDS,
                    f"--jacobian must be one of {JACOBIAN_KINDS}, got {self.jacobian!r}",
                ),
                (
                    self.disc_optimizer in DISC_OPTIMIZERS,
                    f"--disc_optimizer must be one of {DISC_OPTIMIZERS}, got {self.disc_optimizer!r}",
                ),
                (
                    not (self.jarn and self.jarn_variant == "release" and not config.model.standardize_input),
                    "--jarn_variant=release reproduces the release's feed into the standardised input; it "
                    "needs --standardize_input",
                ),
                (
                    not (self.jarn and self.double_backprop > 0),
                    "--jarn and --double_backprop are separate regularisers of the paper; use one of them",
                ),
                (
                    not (self.jarn and self.jarn_start_step(train_steps) >= train_steps),
                    f"--jarn_start={self.jarn_start} leaves no JARN step in --train_steps={train_steps}",
                ),
            ]
        )


# The GAN papers train with Adam 2e-4 at a constant rate, batch 64, weight
# decay 1e-4 and no augmentation; PGD evaluation of a classifier means nothing here.
@register_mode(
    "gan",
    presets=dict(learning_rate=2e-4, lr_boundaries=(), weight_decay=1e-4, batch_size=64, augment=False),
    unused_flags=_GAN_UNUSED + ("eval_pgd_steps", "eval_pgd_examples"),
)
@dataclasses.dataclass(frozen=True)
class GANConfig:
    """The ``gan`` mode: a GAN whose discriminator may be made robust.

    Zhou & Kraehenbuehl, "Don't let your discriminator be fooled" (ICLR 2019).
    Objective (eq. 1): L(G, D) = E_x f(-D(x)) + E_z f(D(G(z))), maximised by
    D and minimised by G, with f(t) = -log(1 + e^-t) (gan), -(1 + t)^2 / 2
    (lsgan) or t (wgan). Sign convention: for gan and wgan the discriminator
    scores generated images high and real ones low (Mescheder et al.'s
    convention, which the paper follows); for lsgan its optimum is D = +1 on
    real and -1 on generated images. Images are in [0, 1]; the regularisers'
    radius ``reg_delta`` is in those units.
    """

    RESUMABLE: ClassVar[FrozenSet[str]] = frozenset({"fcd_network", "fcd_samples"})

    gan_loss: str = flag_field("gan", "The loss f of the GAN objective (eq. 1).", choices=GAN_LOSSES)
    gan_generator_loss: str = flag_field(
        "non_saturating",
        "What the generator minimises. non_saturating (default; the authors' code): -E f(-D(G(z))), the "
        "generator asks to be taken for real: -log(1 - sigmoid(D)) for gan, (1 - D)^2 / 2 for lsgan (Mao "
        "et al.), D for wgan. minimax: E f(D(G(z))), eq. 1's term as written; for gan it saturates where D "
        "rejects the samples, for lsgan it pushes samples scored below -1 further toward the generated "
        "side (not Mao et al.'s LSGAN); for wgan the two are the same. Default: non_saturating for "
        "--mode=gan (the authors' code), minimax for --mode=advgan (the Rob-GAN paper's eq. 9 as written).",
        choices=GAN_GENERATOR_LOSSES,
        flag_default=None,
    )
    disc_reg: str = _disc_reg_fields()["disc_reg"]
    reg_weight: float = _disc_reg_fields()["reg_weight"]
    reg_delta: float = _disc_reg_fields()["reg_delta"]
    rfm_alpha: float = _disc_reg_fields()["rfm_alpha"]
    reg_attack: str = _disc_reg_fields()["reg_attack"]
    reg_attack_steps: int = _disc_reg_fields()["reg_attack_steps"]
    reg_target: str = _disc_reg_fields()["reg_target"]
    gp_weight: float = _disc_reg_fields()["gp_weight"]
    gp_target: float = _disc_reg_fields()["gp_target"]
    noise_sigma: float = _disc_reg_fields()["noise_sigma"]
    disc_steps: int = flag_field(
        1, "Discriminator steps per generator step (each on its own batch; the paper gives none).", lower=1
    )
    latent_dim: int = _gan_fields()["latent_dim"]
    gan_channels: int = _gan_fields()["gan_channels"]
    adam_beta1: float = _gan_fields()["adam_beta1"]
    adam_beta2: float = _gan_fields()["adam_beta2"]
    fcd_network: Optional[str] = _gan_fields()["fcd_network"]
    fcd_samples: int = _gan_fields()["fcd_samples"]
    gan_block: str = flag_field(
        "resnet",
        "Blocks of both networks. resnet: Appendix C's pre-activation residual block, (norm, "
        "nonlinearity, conv3x3) x 2 plus the identity; vanilla: the same two layers without the identity "
        "(ours: Table 2's 'vanilla convolution' blocks are not defined in the paper). For the Table 2 "
        "study of architectures.",
        choices=GAN_BLOCKS,
    )
    gan_activation: str = flag_field(
        GAN_PAPER_OPTION,
        "Nonlinearity of every block and of the last layers of both networks. paper: Appendix C's ReLU "
        "in the generator, leaky ReLU (slope 0.2) in the discriminator; relu, leaky_relu (slope 0.2) or "
        "tanh: that one in both. For the Table 2 study of architectures.",
        choices=(GAN_PAPER_OPTION,) + GAN_ACTIVATIONS,
    )
    gan_norm: str = flag_field(
        GAN_PAPER_OPTION,
        "Normalisation of every block and of the last layers of both networks. paper: Appendix C's batch "
        "norm in the generator, instance norm in the discriminator; batch, instance or none: that one in "
        "both. For the Table 2 study of architectures.",
        choices=(GAN_PAPER_OPTION,) + GAN_NORMS,
    )

    # Fields whose flag may only be given with these regularisers.
    REG_FIELDS: ClassVar[Dict[str, Tuple[str, ...]]] = DISC_REG_FIELDS

    @staticmethod
    def derive(values: Dict[str, Any]) -> Dict[str, Any]:
        """Refuses regulariser flags given without their regulariser, then fills defaults.

        Raises:
          ValueError: naming the flag and the --disc_reg it needs.
        """
        out = _derive_disc_reg(dict(values))
        if out.get("gan_generator_loss") is None:
            out["gan_generator_loss"] = GANConfig.gan_generator_loss
        return out

    def validate(self, config: "ExperimentConfig") -> None:
        _check(
            _disc_reg_checks(self)
            + [
                (
                    self.gan_loss in GAN_LOSSES,
                    f"--gan_loss must be one of {GAN_LOSSES}, got {self.gan_loss!r}",
                ),
                (
                    self.gan_generator_loss in GAN_GENERATOR_LOSSES,
                    f"--gan_generator_loss must be one of {GAN_GENERATOR_LOSSES}, got {self.gan_generator_loss!r}",
                ),
                (self.disc_steps >= 1, f"--disc_steps must be >= 1, got {self.disc_steps}"),
                (self.latent_dim >= 1, f"--latent_dim must be >= 1, got {self.latent_dim}"),
                (self.gan_channels >= 1, f"--gan_channels must be >= 1, got {self.gan_channels}"),
                (0 <= self.adam_beta1 < 1, f"--adam_beta1 must be in [0, 1), got {self.adam_beta1}"),
                (0 <= self.adam_beta2 < 1, f"--adam_beta2 must be in [0, 1), got {self.adam_beta2}"),
                (
                    self.gan_block in GAN_BLOCKS,
                    f"--gan_block must be one of {GAN_BLOCKS}, got {self.gan_block!r}",
                ),
                (
                    self.gan_activation in (GAN_PAPER_OPTION,) + GAN_ACTIVATIONS,
                    f"--gan_activation must be one of {(GAN_PAPER_OPTION,) + GAN_ACTIVATIONS}, "
                    f"got {self.gan_activation!r}",
                ),
                (
                    self.gan_norm in (GAN_PAPER_OPTION,) + GAN_NORMS,
                    f"--gan_norm must be one of {(GAN_PAPER_OPTION,) + GAN_NORMS}, got {self.gan_norm!r}",
                ),
                (
                    config.model.mixed_precision == "none",
                    "--mixed_precision is not supported by --mode=gan yet",
                ),
            ]
        )


# The sections every mode has, in the order they are written.
COMMON_SECTIONS: Dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optimizer": OptimizerConfig,
    "runtime": RuntimeConfig,
}


def mode_section_class(mode: str) -> type:
    """The config section class of ``mode``.

    Raises:
      ValueError: for an unknown mode, listing the known ones.
    """
    try:
        return MODE_SECTIONS[mode]
    except KeyError:
        raise ValueError(
            f"--mode={mode!r} is not available; choose one of {sorted(MODE_SECTIONS)}."
        ) from None


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines a training run.

    Attributes:
      mode: the training mode (a key of ``MODE_SECTIONS``).
      seed: seed of initialisation, data order, noise and attacks.
      data, model, optimizer, runtime: the common sections.
      mode_config: the mode's own section (an instance of
        ``MODE_SECTIONS[mode]``); None gives its defaults. Written to
        config.json under the mode's name.
    """

    mode: str = "classifier"
    seed: int = 0
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    mode_config: Any = None

    def __post_init__(self):
        klass = mode_section_class(self.mode)
        if self.mode_config is None:
            object.__setattr__(self, "mode_config", klass())
        elif not isinstance(self.mode_config, klass):
            raise ValueError(
                f"mode {self.mode!r} takes a {klass.__name__} section, got {type(self.mode_config).__name__}"
            )

    def sections(self) -> Dict[str, Any]:
        """Section name -> section, the mode's own last (under the mode's name)."""
        out = {name: getattr(self, name) for name in COMMON_SECTIONS}
        out[self.mode] = self.mode_config
        return out

    def validate(self) -> None:
        """Checks every section; raises ValueError naming the flag."""
        for name, section in self.sections().items():
            if name == self.mode:
                section.validate(self)
            else:
                section.validate()

    def to_dict(self) -> dict:
        out: Dict[str, Any] = {"mode": self.mode, "seed": self.seed}
        out.update({name: dataclasses.asdict(s) for name, s in self.sections().items()})
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "ExperimentConfig":
        """Reads ``to_dict``'s output, or a config.json of the old layout."""
        d = upgrade_config_dict(d)
        mode = d.get("mode", "classifier")
        kwargs = {name: _build(klass, d.get(name, {})) for name, klass in COMMON_SECTIONS.items()}
        return cls(
            mode=mode,
            seed=d.get("seed", 0),
            mode_config=_build(mode_section_class(mode), d.get(mode, {})),
            **kwargs,
        )


def with_fields(config: ExperimentConfig, **values: Any) -> ExperimentConfig:
    """A copy of ``config`` with fields replaced by name, in the section that holds each.

    Field names are unique across the sections of a mode, so
    ``with_fields(c, eps=0.1, train_steps=10, seed=1)`` needs no section
    names (``mode`` and ``seed`` are the top-level fields).

    Raises:
      ValueError: for a name that no section of the config's mode has.
    """
    top = {k: values.pop(k) for k in ("mode", "seed") if k in values}
    if "mode" in top and top["mode"] != config.mode:
        config = ExperimentConfig(
            mode=top["mode"],
            seed=config.seed,
            data=config.data,
            model=config.model,
            optimizer=config.optimizer,
            runtime=config.runtime,
        )
    changes: Dict[str, Any] = {}
    for attr, section in list(COMMON_SECTIONS.items()) + [("mode_config", type(config.mode_config))]:
        names = {f.name for f in dataclasses.fields(section)}
        mine = {k: values.pop(k) for k in list(values) if k in names}
        if mine:
            changes[attr] = dataclasses.replace(getattr(config, attr), **mine)
    if values:
        raise ValueError(f"No field {sorted(values)} in the sections of mode {config.mode!r}.")
    return dataclasses.replace(config, **changes, **top)


def _build(klass: type, values: dict) -> Any:
    """``klass`` from a stored dict; a field the dict lacks takes ``klass.MISSING_FIELD_VALUES`` or its default."""
    names = {f.name for f in dataclasses.fields(klass)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"Unknown {klass.__name__} field(s) {unknown}.")
    values = {**getattr(klass, "MISSING_FIELD_VALUES", {}), **values}
    return klass(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def upgrade_config_dict(d: dict) -> dict:
    """Converts a config.json of the layout before sections to today's layout.

    Runs written before the sections (``{"data", "model", "train"}`` with
    every training field in ``train``) keep resuming: their fields are moved
    to the section that holds them now. A dict of today's layout is returned
    unchanged.

    Args:
      d: a parsed config.json (or export metadata's ``config``).

    Returns:
      The dict in today's layout.
    """
    if "train" not in d or "optimizer" in d:
        return d
    train = dict(d["train"])
    mode = train.pop("mode", "classifier")
    out: Dict[str, Any] = {"mode": mode, "seed": train.pop("seed", 0)}
    out["data"] = dict(d.get("data", {}))
    out["model"] = dict(d.get("model", {}))
    out["model"]["mixed_precision"] = train.pop("mixed_precision", "none")
    for name, klass in (("optimizer", OptimizerConfig), ("runtime", RuntimeConfig)):
        out[name] = {f.name: train.pop(f.name) for f in dataclasses.fields(klass) if f.name in train}
    out[mode] = train
    return out


def config_differences(old: dict, new: dict) -> list:
    """Lists ``section.field: old -> new`` for fields that must match on resume.

    Args:
      old: the dict stored in ``model_dir/config.json`` (either layout).
      new: the dict of the configuration asked for now.

    Returns:
      Human-readable differences, empty when the run may resume. A field
      missing from ``old`` (added to the code after the run was written)
      counts as the section's ``MISSING_FIELD_VALUES`` entry (what runs
      written before it did), else as its default.
    """
    old, new = upgrade_config_dict(old), upgrade_config_dict(new)
    diffs = []
    for key in ("mode", "seed"):
        if old.get(key) != new.get(key):
            diffs.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    sections = dict(COMMON_SECTIONS)
    for mode in {old.get("mode"), new.get("mode")} - {None}:
        sections.setdefault(mode, MODE_SECTIONS.get(mode))
    for section, klass in sections.items():
        resumable = getattr(klass, "RESUMABLE", frozenset())
        # A field added after a run was written is compared at its default:
        # the run behaved as the default does (new fields keep old behaviour),
        # unless the section's MISSING_FIELD_VALUES says what such runs did.
        defaults = {f.name: f.default for f in dataclasses.fields(klass)} if klass else {}
        defaults.update(getattr(klass, "MISSING_FIELD_VALUES", {}) if klass else {})
        a, b = old.get(section, {}), new.get(section, {})
        for key in sorted(set(a) | set(b)):
            if key in resumable:
                continue
            va, vb = a.get(key, defaults.get(key)), b.get(key, defaults.get(key))
            if isinstance(va, list):
                va = tuple(va)
            if isinstance(vb, list):
                vb = tuple(vb)
            if va != vb:
                diffs.append(f"{section}.{key}: {va!r} -> {vb!r}")
    return diffs


def write_config(config: ExperimentConfig, path: str, extra: Optional[dict] = None) -> None:
    """Writes the resolved configuration as JSON, atomically."""
    payload: dict[str, Any] = config.to_dict()
    if extra:
        payload.update(extra)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_config(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------------------
# The ``advgan`` modes (Rob-GAN: "From Adversarial Training to Generative
# Adversarial Networks"): co-training of a class-conditional generator and a
# two-head discriminator on PGD-attacked real images (``advgan``, alias
# ``robgan``), then fine-tuning of the discriminator's class head
# (``advgan_finetune``); the paper's baseline, PGD-AT of the same class head
# from scratch (``advgan_pgd_at``).

# How the discriminator's class loss is split: eq. 9 (the paper's: D's class
# loss on attacked real images only) or eq. 8 (AC-GAN: on real and generated).
ADVGAN_CLASS_LOSSES = ("split", "acgan")
# The names of the co-training mode (``robgan`` is an alias).
ADVGAN_MODES = ("advgan", "robgan")
# The discriminator's network (``jarn_tf.robgan.models.build_discriminator``): SN-GAN's
# ResNet with spectral norm (the paper's), the authors' code's (batch norm), or
# this project's earlier network (kept for older runs).
ADVGAN_DISCRIMINATORS = ("sngan", "authors", "legacy")
# Weights of the co-training loss terms (``jarn_tf.robgan.losses.LOSS_WEIGHTS``): eq. 9
# as written, or the authors' code's 0.5 / 0.5 / 1 (discriminator), 0.5 / 0.5
# (generator).
ADVGAN_LOSS_WEIGHTS = ("paper", "authors")
# Madry et al.'s PGD step rule: step = 2.5 * eps / steps, so the attack can
# reach the boundary of the eps-ball from the clean image (and move along it).
MADRY_STEP_FACTOR = 2.5


def _help_of(section: type, name: str) -> str:
    """The help of ``section``'s field ``name`` (a field sharing its flag must share its help)."""
    return next(f.metadata["help"] for f in dataclasses.fields(section) if f.name == name)


def _advgan_attack_fields(step: float = 4.0 / 255.0) -> Dict[str, Any]:
    """Field definitions shared by both AdvGAN sections (one flag each).

    Args:
      step: the field default of ``attack_step_size`` (a config built in code):
        the flag's default follows --eps (see ``derive``); 4/255 = 2.5 (8/255)
        / 5 for co-training, 8/1275 = (8/255) / 5 for fine-tuning.
    """
    return dict(
        # The flag is ClassifierConfig's (one flag per name): the same help.
        eps=image_fraction(8.0 / 255.0, _help_of(ClassifierConfig, "eps")),
        attack_steps=flag_field(
            5,
            "PGD steps of the training attack: on real images in --mode=advgan (paper: 5; 0 = no attack, "
            "the ablation without adversarial training), on real and generated images in "
            "--mode=advgan_finetune (authors' code: 5) and on real images in --mode=advgan_pgd_at.",
            lower=0,
        ),
        attack_step_size=image_fraction(
            step,
            "Step of the training PGD in [0, 1] units. Default: 2.5 * eps / --attack_steps in "
            "--mode=advgan ([ours], Madry et al.'s rule, so that the attack can reach eps: eps/2 for 5 "
            "steps); [authors' code]: 0.0078 against eps 0.0625 in [-1, 1] units, i.e. eps/8, whose 5 steps "
            "cover only 5/8 of eps (--attack_step_size=<eps>/8 --noattack_must_reach_eps). eps/5 in "
            "--mode=advgan_finetune ([authors' code]) and --mode=advgan_pgd_at (the fine-tuning's).",
        ),
        attack_random_start=flag_field(
            False,
            "Start the training PGD from a uniform point of the eps-ball. Default: off in --mode=advgan "
            "(authors' code), on in --mode=advgan_finetune and --mode=advgan_pgd_at (ours, as PGD-AT).",
            flag_default=None,
        ),
        attack_must_reach_eps=flag_field(
            True,
            "Refuse a training attack that can never reach eps from the clean image: --attack_steps x "
            "--attack_step_size < --eps. --noattack_must_reach_eps allows it (e.g. the authors' code's eps/8 "
            "steps); a check only, it changes nothing in training.",
        ),
    )


def _advgan_discriminator_field(default: Optional[str]) -> Any:
    """The --advgan_discriminator field (one flag, the same help in both AdvGAN sections)."""
    return flag_field(
        default,
        "The discriminator's network (jarn_tf/robgan/models.py). sngan (default; [paper]: SN-GAN's CIFAR-10 "
        "ResNet discriminator, spectral norm on every conv and linear layer, ReLU, global sum pooling); "
        "authors ([authors' code] ResNetAC(bn=True): the same blocks with batch norm after every conv, no "
        "spectral norm); legacy ([ours] the network of runs written before this flag: conv stem, leaky "
        "ReLU 0.2, no normalisation, global average pooling; an older config.json without the flag is "
        "legacy). --mode=advgan_finetune takes the --init_from run's and refuses another; --mode=advgan_pgd_at "
        "trains this network's trunk and class head from scratch.",
        choices=ADVGAN_DISCRIMINATORS,
        flag_default=None,
    )


# [paper] SN-GAN's settings, which the paper keeps: Adam 2e-4 (betas in the
# section), batch 64, no weight decay; no augmentation unless asked.
_ADVGAN_PRESETS = dict(learning_rate=2e-4, lr_boundaries=(), weight_decay=0.0, batch_size=64, augment=False)
# Fine-tuning: [authors' code] finetune.py: Adam 1e-3, batch 128, staged
# epochs 20/20/10/10 with lr / 10 after each stage (an earlier finetune.py
# had 40/20/20/10): boundaries at 20/60, 40/60 and 50/60 of the run. The
# paper's baseline (advgan_pgd_at) uses the fine-tuning's optimizer.
_FINETUNE_PRESETS = dict(
    learning_rate=1e-3,
    lr_boundaries=(20 / 60, 40 / 60, 50 / 60),
    lr_decay=0.1,
    weight_decay=0.0,
    batch_size=128,
)


@register_mode("advgan", "robgan", presets=_ADVGAN_PRESETS, unused_flags=_GAN_UNUSED)
@dataclasses.dataclass(frozen=True)
class AdvGANConfig:
    """The ``advgan`` mode: co-training of generator, discriminator and PGD attacker.

    Discriminator (maximises, eq. 9): L_S + L_C1, with L_S = E log P(S =
    real | x_adv) + E log P(S = fake | G(z, y)) over PGD-attacked real images
    x_adv and generated images, and L_C1 = E log P(C = y | x_adv) on attacked
    real images only. Generator (maximises): L_C2 - L_S, L_C2 = E log P(C = y
    | G(z, y)). ``--class_loss=acgan`` gives the discriminator eq. 8's L_C =
    L_C1 + L_C2 instead. The attack maximises the discriminator's loss on the
    true class and "real": -log P(S = real | x) - log P(C = y | x), from the
    real images plus U(0, ``dequantize_noise``). ``advgan_loss_weights``
    weighs the terms (paper: 1 each; authors: the authors' code's 0.5 / 0.5 /
    1), ``advgan_discriminator`` picks the network. All eps are in [0, 1]
    image units. A config.json written before ``advgan_discriminator`` and
    ``dequantize_noise`` existed reads as ``legacy`` and 0
    (``MISSING_FIELD_VALUES``), what those runs did.
    """

    RESUMABLE: ClassVar[FrozenSet[str]] = frozenset({"fcd_network", "fcd_samples", "attack_must_reach_eps"})
    # What runs written before these fields did (their config.json lacks them).
    MISSING_FIELD_VALUES: ClassVar[Dict[str, Any]] = {
        "advgan_discriminator": "legacy",
        "dequantize_noise": 0.0,
    }

    class_loss: str = flag_field(
        "split",
        "The discriminator's class loss: split (eq. 9, the paper's: class loss on attacked real images "
        "only) or acgan (eq. 8: on real and generated images, for the paper's ablation).",
        choices=ADVGAN_CLASS_LOSSES,
    )
    # The flag is GANConfig's: minimax = -L_S as written; non_saturating = -log P(S = real | G(z, y)),
    # the authors' code. The generator's class loss -L_C2 is added to either.
    gan_generator_loss: str = flag_field(
        "minimax", _help_of(GANConfig, "gan_generator_loss"), choices=GAN_GENERATOR_LOSSES
    )
    eps: float = _advgan_attack_fields()["eps"]
    attack_steps: int = _advgan_attack_fields()["attack_steps"]
    attack_step_size: float = _advgan_attack_fields()["attack_step_size"]
    attack_random_start: bool = _advgan_attack_fields()["attack_random_start"]
    attack_must_reach_eps: bool = _advgan_attack_fields()["attack_must_reach_eps"]
    advgan_discriminator: str = _advgan_discriminator_field("sngan")
    advgan_loss_weights: str = flag_field(
        "paper",
        "Weights of the co-training losses. paper (default; [paper] eq. 9 as written: every term weight 1); "
        "authors ([authors' code] loss_nll's lam: the discriminator minimises 0.5 (-log P(real|x_adv)) + "
        "0.5 (-log P(y|x_adv)) + 1 (-log P(fake|G)), train.py with --our_loss, which the authors' README "
        "uses; with --class_loss=acgan 0.5 (-log P(fake|G)) + 0.5 (-log P(y_g|G)) on generated images, "
        "train.py without --our_loss; the generator 0.5 source + 0.5 class).",
        choices=ADVGAN_LOSS_WEIGHTS,
    )
    dequantize_noise: float = flag_field(
        1.0 / 256.0,
        "Dequantisation noise in [0, 1] units: the real images get + U(0, noise) per pixel before the "
        "attack, in --mode=advgan only (not clipped; the attack keeps x_adv in [0, 1]). Default 1/256: "
        "[authors' code] train.py's U(0, 1/128) in [-1, 1] units, after SN-GAN's CIFAR-10 data code; the "
        "paper is silent; the authors' finetune.py adds none. 0: none (runs written before this flag).",
        fraction=True,
        lower=0.0,
        upper=1.0,
    )
    # The gan mode's robust-discriminator regularisers on the real/fake (source) head
    # (robgan/trainer.py): score D = -source logit (high = generated), generated = G(z, y),
    # real = the attacked real images; rfm on the trunk's pooled features and the source kernel.
    disc_reg: str = _disc_reg_fields()["disc_reg"]
    reg_weight: float = _disc_reg_fields()["reg_weight"]
    reg_delta: float = _disc_reg_fields()["reg_delta"]
    rfm_alpha: float = _disc_reg_fields()["rfm_alpha"]
    reg_attack: str = _disc_reg_fields()["reg_attack"]
    reg_attack_steps: int = _disc_reg_fields()["reg_attack_steps"]
    reg_target: str = _disc_reg_fields()["reg_target"]
    gp_weight: float = _disc_reg_fields()["gp_weight"]
    gp_target: float = _disc_reg_fields()["gp_target"]
    noise_sigma: float = _disc_reg_fields()["noise_sigma"]
    advgan_disc_steps: int = flag_field(
        5,
        "Discriminator steps per generator step (SN-GAN's 5, which the paper keeps; each on its own batch).",
        lower=1,
    )
    latent_dim: int = _gan_fields()["latent_dim"]
    gan_channels: int = _gan_fields()["gan_channels"]
    adam_beta1: float = _gan_fields()["adam_beta1"]
    adam_beta2: float = _gan_fields()["adam_beta2"]
    fcd_network: Optional[str] = _gan_fields()["fcd_network"]
    fcd_samples: int = _gan_fields()["fcd_samples"]

    @staticmethod
    def derive(values: Dict[str, Any]) -> Dict[str, Any]:
        """Fills the co-training attack's step (2.5 eps / steps, Madry et al.'s rule), its random start
        (off, the authors' code's) and the discriminator (sngan, the paper's)."""
        out = _derive_disc_reg(dict(values))
        if out.get("attack_step_size") is None:
            steps = out.get("attack_steps") or 1
            out["attack_step_size"] = min(1.0, MADRY_STEP_FACTOR * out["eps"] / steps)
        if out.get("attack_random_start") is None:
            out["attack_random_start"] = False
        if out.get("advgan_discriminator") is None:
            out["advgan_discriminator"] = AdvGANConfig.advgan_discriminator
        if out.get("gan_generator_loss") is None:
            out["gan_generator_loss"] = AdvGANConfig.gan_generator_loss
        return out

    def validate(self, config: "ExperimentConfig") -> None:
        _check(
            _advgan_attack_checks(self)
            + _disc_reg_checks(self)
            + [
                (
                    self.class_loss in ADVGAN_CLASS_LOSSES,
                    f"--class_loss must be one of {ADVGAN_CLASS_LOSSES}, got {self.class_loss!r}",
                ),
                (
                    self.advgan_discriminator in ADVGAN_DISCRIMINATORS,
                    f"--advgan_discriminator must be one of {ADVGAN_DISCRIMINATORS}, "
                    f"got {self.advgan_discriminator!r}",
                ),
                (
                    self.advgan_loss_weights in ADVGAN_LOSS_WEIGHTS,
                    f"--advgan_loss_weights must be one of {ADVGAN_LOSS_WEIGHTS}, got {self.advgan_loss_weights!r}",
                ),
                (
                    0.0 <= self.dequantize_noise <= 1.0,
                    f"--dequantize_noise must be in [0, 1], got {self.dequantize_noise}",
                ),
                (
                    self.gan_generator_loss in GAN_GENERATOR_LOSSES,
                    f"--gan_generator_loss must be one of {GAN_GENERATOR_LOSSES}, got {self.gan_generator_loss!r}",
                ),
                (
                    self.advgan_disc_steps >= 1,
                    f"--advgan_disc_steps must be >= 1, got {self.advgan_disc_steps}",
                ),
                (self.latent_dim >= 1, f"--latent_dim must be >= 1, got {self.latent_dim}"),
                (self.gan_channels >= 1, f"--gan_channels must be >= 1, got {self.gan_channels}"),
                (0 <= self.adam_beta1 < 1, f"--adam_beta1 must be in [0, 1), got {self.adam_beta1}"),
                (0 <= self.adam_beta2 < 1, f"--adam_beta2 must be in [0, 1), got {self.adam_beta2}"),
                (
                    # One refusal for every network (sngan's SpectralNormalization included).
                    config.model.mixed_precision == "none",
                    f"--mixed_precision is not supported by --mode={config.mode} yet",
                ),
            ]
        )


def _advgan_attack_checks(section: Any) -> List[Tuple[bool, str]]:
    steps, step, eps = section.attack_steps, section.attack_step_size, section.eps
    return [
        (
            0.0 <= section.eps <= 1.0,
            f"--eps must be in [0, 1] (pixel units of [0, 1] images), got {section.eps}",
        ),
        (section.attack_steps >= 0, f"--attack_steps must be >= 0, got {section.attack_steps}"),
        (
            0.0 <= section.attack_step_size <= 1.0,
            f"--attack_step_size must be in [0, 1], got {section.attack_step_size}",
        ),
        (
            # A relative tolerance, so that eps / steps given as a rounded fraction passes.
            not section.attack_must_reach_eps or steps == 0 or steps * step >= eps * (1 - 1e-6),
            f"--attack_steps={steps} x --attack_step_size={step:.6g} = {steps * step:.6g} < --eps={eps:.6g}: "
            f"the training attack can never reach eps; give --attack_step_size >= eps / steps = "
            f"{eps / max(steps, 1):.6g}, or --noattack_must_reach_eps to keep it",
        ),
    ]


@register_mode(
    "advgan_finetune",
    presets=_FINETUNE_PRESETS,
    unused_flags=_GAN_UNUSED,
    foreign_flag_reasons={
        name: "Fine-tuning (eq. 10) trains the class head only: it has no real/fake loss for --disc_reg to "
        "regularise; give --disc_reg to the --mode=advgan run"
        for name in _disc_reg_fields()
    },
)
@dataclasses.dataclass(frozen=True)
class AdvGANFinetuneConfig:
    """The ``advgan_finetune`` mode: eq. 10 on the co-trained discriminator's class head.

    Starts from the generator and discriminator of the ``advgan`` run in
    ``init_from`` (its newest checkpoint) and minimises, over the trunk and
    the class head, E xent(x_adv, y) on PGD-attacked real images plus
    ``lambda_fake`` times E xent(G(z, y)_adv, y) on PGD-attacked generated
    images with their conditioning labels (the attack maximises the
    cross-entropy: the paper's "arg min" is a typo). The generator is frozen
    (inference mode). Exports the class head as a classifier.
    """

    RESUMABLE: ClassVar[FrozenSet[str]] = frozenset({"attack_must_reach_eps"})
    # What runs written before these fields did (every co-training run then was legacy).
    MISSING_FIELD_VALUES: ClassVar[Dict[str, Any]] = {"advgan_discriminator": "legacy"}

    init_from: Optional[str] = flag_field(
        None,
        "The model_dir of the --mode=advgan run (same --dataset) whose newest checkpoint gives the "
        "generator and the discriminator to fine-tune. Required by --mode=advgan_finetune.",
    )
    lambda_fake: float = flag_field(
        0.5,
        "lambda of eq. 10, the weight of the cross-entropy on attacked generated images (not in the paper; "
        "the authors' README suggests 0.3-0.8; ours: 0.5).",
        lower=0.0,
    )
    eps: float = _advgan_attack_fields()["eps"]
    attack_steps: int = _advgan_attack_fields()["attack_steps"]
    attack_step_size: float = _advgan_attack_fields(8.0 / 1275.0)["attack_step_size"]
    attack_random_start: bool = _advgan_attack_fields()["attack_random_start"]
    attack_must_reach_eps: bool = _advgan_attack_fields()["attack_must_reach_eps"]
    # None: the --init_from run's (filled by derive when that run can be read); given, it must be the run's.
    advgan_discriminator: Optional[str] = _advgan_discriminator_field(None)

    @staticmethod
    def derive(values: Dict[str, Any]) -> Dict[str, Any]:
        """Makes --init_from absolute; fills the attack's step (eps/5) and random start (on) and the
        discriminator (the --init_from run's, when it can be read; a conflict is left to ``validate``)."""
        out = dict(values)
        if out.get("init_from"):
            out["init_from"] = os.path.abspath(out["init_from"])
        if out.get("attack_step_size") is None:
            out["attack_step_size"] = out["eps"] / 5
        if out.get("attack_random_start") is None:
            out["attack_random_start"] = True
        if out.get("advgan_discriminator") is None and out.get("init_from"):
            try:
                section = AdvGANFinetuneConfig(init_from=out["init_from"]).cotraining_section()
            except ValueError:
                pass  # validate says what is wrong with --init_from
            else:
                out["advgan_discriminator"] = section.advgan_discriminator
        return out

    def init_run_config(self) -> dict:
        """The config.json of the ``init_from`` run.

        Raises:
          ValueError: no --init_from, no run there, or an unreadable config.json.
        """
        if not self.init_from:
            raise ValueError(
                "--mode=advgan_finetune needs --init_from=<model_dir of a --mode=advgan run> (the co-trained "
                "generator and discriminator to fine-tune)"
            )
        path = os.path.join(self.init_from, "config.json")
        if not os.path.isfile(path):
            raise ValueError(
                f"--init_from={self.init_from} holds no training run (no config.json); pass the model_dir of "
                "a --mode=advgan run"
            )
        try:
            stored = read_config(path)
        except (OSError, ValueError) as e:
            raise ValueError(f"--init_from={self.init_from}: {path} cannot be read ({e})") from e
        if not isinstance(stored, dict):
            raise ValueError(f"--init_from={self.init_from}: {path} holds no JSON object")
        return stored

    def cotraining_section(self) -> "AdvGANConfig":
        """The ``advgan`` section of the ``init_from`` run (fields it lacks: ``MISSING_FIELD_VALUES``).

        Raises:
          ValueError: as ``init_run_config``, or a section this version cannot read.
        """
        stored = upgrade_config_dict(self.init_run_config())
        try:
            return _build(AdvGANConfig, stored.get(stored.get("mode", "advgan")) or {})
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"--init_from={self.init_from}: its co-training section cannot be read ({e})"
            ) from e

    def validate(self, config: "ExperimentConfig") -> None:
        _check(
            _advgan_attack_checks(self)
            + [
                (self.lambda_fake >= 0, f"--lambda_fake must be >= 0, got {self.lambda_fake}"),
                (
                    config.model.mixed_precision == "none",
                    "--mixed_precision is not supported by --mode=advgan_finetune yet",
                ),
            ]
        )
        stored = self.init_run_config()
        mode = stored.get("mode", "classifier")
        if mode not in ADVGAN_MODES:
            raise ValueError(
                f"--init_from={self.init_from} is a --mode={mode} run; --mode=advgan_finetune starts from a "
                "--mode=advgan run"
            )
        dataset = (stored.get("data") or {}).get("dataset")
        if dataset != config.data.dataset:
            raise ValueError(
                f"--init_from={self.init_from} was trained on {dataset} but --dataset={config.data.dataset}; "
                "fine-tune on the co-training run's dataset"
            )
        checkpoints = os.path.join(self.init_from, "checkpoints")
        if not (os.path.isdir(checkpoints) and any(n.endswith(".index") for n in os.listdir(checkpoints))):
            raise ValueError(
                f"--init_from={self.init_from} has no checkpoint yet ({checkpoints}); train it first"
            )
        trained = self.cotraining_section().advgan_discriminator
        if self.advgan_discriminator not in (None, trained):
            raise ValueError(
                f"--advgan_discriminator={self.advgan_discriminator} but --init_from={self.init_from} was "
                f"co-trained with --advgan_discriminator={trained}; fine-tuning keeps the co-trained network: "
                "drop the flag"
            )


@register_mode("advgan_pgd_at", presets=_FINETUNE_PRESETS, unused_flags=_GAN_UNUSED)
@dataclasses.dataclass(frozen=True)
class AdvGANPGDATConfig:
    """The ``advgan_pgd_at`` mode: the paper's baseline, PGD-AT of the discriminator's own classifier.

    Rob-GAN's Table 1 compares with Madry et al.'s adversarial training
    "keeping hyperparameters and network structure unchanged" [paper]. This
    mode trains, from scratch, the network ``--mode=advgan_finetune`` exports
    (the trunk and class head of ``--advgan_discriminator`` at width
    ``--gan_channels``) on PGD-attacked real images only: eq. 10 with lambda
    = 0 and no co-training. The attack, optimizer and schedule default to the
    fine-tuning's ([authors' code] finetune.py: PGD-5 of step eps/5, Adam
    1e-3, batch 128, lr / 10 at 20/60, 40/60 and 50/60 of the run; [ours]
    random start). Give it the co-training flagfile's network and eps (the
    ``flags/*_advgan_network.cfg`` both include) and as many real images as
    co-training and fine-tuning saw together (``--train_steps``).
    """

    RESUMABLE: ClassVar[FrozenSet[str]] = frozenset({"attack_must_reach_eps"})

    eps: float = _advgan_attack_fields()["eps"]
    attack_steps: int = _advgan_attack_fields()["attack_steps"]
    attack_step_size: float = _advgan_attack_fields(8.0 / 1275.0)["attack_step_size"]
    attack_random_start: bool = _advgan_attack_fields()["attack_random_start"]
    attack_must_reach_eps: bool = _advgan_attack_fields()["attack_must_reach_eps"]
    advgan_discriminator: str = _advgan_discriminator_field("sngan")
    gan_channels: int = _gan_fields()["gan_channels"]

    @staticmethod
    def derive(values: Dict[str, Any]) -> Dict[str, Any]:
        """Fills the attack's step (eps/5, the fine-tuning's), its random start (on) and the network (sngan)."""
        out = dict(values)
        if out.get("attack_step_size") is None:
            out["attack_step_size"] = out["eps"] / 5
        if out.get("attack_random_start") is None:
            out["attack_random_start"] = True
        if out.get("advgan_discriminator") is None:
            out["advgan_discriminator"] = AdvGANPGDATConfig.advgan_discriminator
        return out

    def validate(self, config: "ExperimentConfig") -> None:
        _check(
            _advgan_attack_checks(self)
            + [
                (
                    self.advgan_discriminator in ADVGAN_DISCRIMINATORS,
                    f"--advgan_discriminator must be one of {ADVGAN_DISCRIMINATORS}, "
                    f"got {self.advgan_discriminator!r}",
                ),
                (self.gan_channels >= 1, f"--gan_channels must be >= 1, got {self.gan_channels}"),
                (
                    config.model.mixed_precision == "none",
                    "--mixed_precision is not supported by --mode=advgan_pgd_at yet",
                ),
            ]
        )
