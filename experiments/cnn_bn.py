"""Beyond the exercise: the ConvNet of exercise 2.3 with BatchNorm after each convolution.

The worked example of adding a model (docs/extending.md): `models.ConvNetBN`, whose running
statistics (`batch_stats`) train with it, checkpoint with it and serve evaluation, prediction and
the attack in eval mode. Otherwise as experiments/cnn.py: no dropout, Adam 1e-3, batch 64,
15,000 steps. Measured once at full length (offline copy, 2026-12-07, `make cnn-bn`): final
test accuracy 92.63 % (best 92.95 % at step 8,500), minimum test loss 0.2111 at step 5,500 and
0.3017 at the end: BatchNorm alone over-fits as the plain ConvNet does (docs/extending.md has it
beside cnn_dropout).

    make cnn-bn         # -> runs/cnn_bn (not part of make reproduce)
"""

from fmnist_jax.config import load_experiment, with_variant


def get_config(variant: str = ""):
    c = load_experiment("cnn")
    c.name = "cnn_bn"
    c.model = "cnn_bn"
    c.bn_momentum = 0.9
    return with_variant(c, variant)
