"""Exercise 2.4.1: the MLP with dropout 0.25 on its hidden layer.

Same as experiments/mlp.py apart from the dropout. Expected: a smaller final train-test loss
gap and a lower final test loss than mlp, test accuracy about the same.

`c.report` replaces mlp's: Figure 5 (mlp beside it) and the dropout claims.

    make mlp-dropout    # -> runs/mlp_dropout
"""

from fmnist_jax.config import load_experiment, with_variant


def get_config(variant: str = ""):
    c = load_experiment("mlp")
    c.name = "mlp_dropout"
    c.dropout_rate = 0.25
    c.report = {  # what the report does with it: fmnist_jax/declarations.py
        "experiment": "mlp_dropout",
        "label": "MLP",
        "figure": "fig5_mlp_dropout.png",
        "title": "Figure 5: Multi-Layer-Perceptron without vs with dropout",
        "dropout_of": "mlp",
        "claims": "dropout_gap,dropout_test_loss,same_accuracy",
    }
    return with_variant(c, variant)
