"""jarn_tf: JARN, adversarial training and robustness evaluation in TF2/Keras 3.

Kept free of TensorFlow imports so that ``import jarn_tf.layers`` (needed to
load ``classifier.keras`` exports) works under any Keras backend.

The public Python API (``jarn_tf.api``) is re-exported here lazily: ``import
jarn_tf`` imports neither it nor TensorFlow; the first use of a name does::

    import jarn_tf
    model = jarn_tf.load_classifier("my_model.keras")  # images NHWC in [0, 1] -> logits
    images, labels = jarn_tf.load_dataset("fashion_mnist", num_examples=1000)
    report = jarn_tf.evaluate_robustness(model, images, labels, eps=0.1, attacks=("pgd20", "autoattack"))
    print(report)

When a command of this package starts (``python -m jarn_tf.evaluate``,
``jarn-train``...), TensorFlow's C++ start-up lines are filtered out before
TensorFlow is first imported (``jarn_tf.core.startup``).
"""

from jarn_tf.core import startup as _startup

__version__ = "0.1.0"

if _startup.started_as_command():
    _startup.quiet_tensorflow_startup()

# The public names of jarn_tf.api (its __all__), re-exported lazily here (PEP 562).
API_NAMES = (
    "load_classifier",
    "load_dataset",
    "evaluate_robustness",
    "RobustnessReport",
    "load_generator",
    "measure_generator",
    "GeneratorReport",
    "AUTOATTACK_QUICK_BUDGET",
)


def __getattr__(name):
    if name in API_NAMES:
        from jarn_tf import api

        value = getattr(api, name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(API_NAMES))
