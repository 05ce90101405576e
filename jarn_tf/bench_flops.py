"""``python -m jarn_tf.bench_flops``: runs ``jarn_tf.bench.flops``, where its code lives."""

import runpy

# As __main__, as before the move: --help shows that module's docstring and flags.
if __name__ == "__main__":
    runpy.run_module("jarn_tf.bench.flops", run_name="__main__", alter_sys=True)
