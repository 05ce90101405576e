"""jarn_tf: JARN, adversarial training and robustness evaluation in TF2/Keras 3.

Kept free of TensorFlow imports so that ``import jarn_tf.layers`` (needed to
load ``classifier.keras`` exports) works under any Keras backend.

When a command of this package starts (``python -m jarn_tf.evaluate``,
``jarn-train``...), TensorFlow's C++ start-up lines are filtered out before
TensorFlow is first imported (``jarn_tf.startup``).
"""

from jarn_tf import startup as _startup

__version__ = "0.1.0"

if _startup.started_as_command():
    _startup.quiet_tensorflow_startup()
