"""``python -m jarn_tf.official_autoattack``: runs ``jarn_tf.robustness.official_autoattack``, where its code lives."""

import runpy

# As __main__, as before the move: --help shows that module's docstring and flags.
if __name__ == "__main__":
    runpy.run_module("jarn_tf.robustness.official_autoattack", run_name="__main__", alter_sys=True)
