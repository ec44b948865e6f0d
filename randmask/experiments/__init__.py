"""Experiments: data loading, checkpoints, training, evaluation, the paper's protocols, adversarial sets.
May import randmask.attacks and randmask.core."""
