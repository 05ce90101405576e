"""JARN, adversarial training and the classifier baselines: the classifier, adaptor and
discriminator networks, their losses, and the trainer of the classifier modes."""
