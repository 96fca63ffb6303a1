"""Exercise 2.4.1: the MLP with dropout 0.25 on its hidden layer.

Same as experiments/mlp.py apart from the dropout. Expected: a smaller final train-test loss
gap and a lower final test loss than mlp, test accuracy about the same.

    make mlp-dropout    # -> runs/mlp_dropout
"""

from fmnist_jax.config import load_experiment, with_variant


def get_config(variant: str = ""):
    c = load_experiment("mlp")
    c.name = "mlp_dropout"
    c.dropout_rate = 0.25
    return with_variant(c, variant)
