"""``python -m jarn_tf.paper``: runs ``jarn_tf.reproduce.paper``, where its code lives."""

import runpy

# As __main__, as before the move: --help shows that module's docstring and flags.
if __name__ == "__main__":
    runpy.run_module("jarn_tf.reproduce.paper", run_name="__main__", alter_sys=True)
