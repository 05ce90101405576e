"""``python -m jarn_tf.robgan_study``: runs ``jarn_tf.robgan.study``, where its code lives."""

import runpy

# As __main__, as before the move: --help shows that module's docstring and flags.
if __name__ == "__main__":
    runpy.run_module("jarn_tf.robgan.study", run_name="__main__", alter_sys=True)
