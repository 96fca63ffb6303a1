"""Beyond the exercise: the ConvNet of exercise 2.3 with BatchNorm after each convolution.

The worked example of adding a model (docs/extending.md): `models.ConvNetBN`, whose running
statistics (`batch_stats`) train with it, checkpoint with it and serve evaluation, prediction and
the attack in eval mode. Otherwise as experiments/cnn.py: no dropout, Adam 1e-3, batch 64,
15,000 steps. Expected (offline copy, measured once, see docs/extending.md): test accuracy about
the ConvNet's with dropout (92-93 %), the test loss rising after its minimum as cnn's does.

    make cnn-bn         # -> runs/cnn_bn (not part of make reproduce)
"""

from fmnist_jax.config import load_experiment, with_variant


def get_config(variant: str = ""):
    c = load_experiment("cnn")
    c.name = "cnn_bn"
    c.model = "cnn_bn"
    c.bn_momentum = 0.9
    return with_variant(c, variant)
