"""Robustness evaluation: FGSM/PGD, the native AutoAttack (one module per algorithm), the evaluation
of a classifier, the gradient-masking checks, analyses, reports, and the official AutoAttack run."""
