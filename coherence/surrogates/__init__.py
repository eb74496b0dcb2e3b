"""UNet and ViT surrogates, training, checkpoints and rollouts (stage 2: train)."""
