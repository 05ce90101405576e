"""jarn_tf: JARN, adversarial training and robustness evaluation in TF2/Keras 3.

Kept free of TensorFlow imports so that ``import jarn_tf.layers`` (needed to
load ``classifier.keras`` exports) works under any Keras backend.
"""

__version__ = "0.1.0"
