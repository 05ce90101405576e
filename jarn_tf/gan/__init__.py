"""GANs with robust discriminators (Zhou & Kraehenbuehl, ICLR 2019): networks, GAN losses,
discriminator regularisers (AR, RFM, gradient penalty, instance noise), image metrics, the
discriminator's robustness, the Dirac-GAN, the trainer of the ``gan`` mode, and the study and table
of the paper's runs."""
