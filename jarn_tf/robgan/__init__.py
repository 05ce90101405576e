"""Rob-GAN (Liu & Hsieh, CVPR 2019): the conditional generator and the classifying discriminator,
their losses, their exports, the trainer of the co-training and fine-tuning modes, and the study."""
