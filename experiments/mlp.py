"""Exercise 2.2: a multi-layer perceptron on Fashion-MNIST, no dropout; it over-fits.

flatten -> Dense 512 -> ReLU -> Dense 10. The exercise does not give the width: 512 hidden units
(407k parameters) are enough to memorise the training set, so the over-fitting the exercise
describes shows clearly. Adam 1e-3, batch 64, 20,000 steps (21 epochs). Expected: test
accuracy about 89 % (offline copy); test loss minimal after a few thousand steps, then rising.

`c.report` declares Figure 3, the over-fitting claim and the dropout-rate sweep
(fmnist_jax/declarations.py); an experiment starting from this one declares its own or none.

    make mlp            # -> runs/mlp
"""

from fmnist_jax.config import base_config, with_variant


def get_config(variant: str = ""):
    c = base_config()
    c.name = "mlp"
    c.model = "mlp"
    c.hidden_size = 512
    c.activation = "relu"
    c.dropout_rate = 0.0
    c.num_train_steps = 20_000
    c.eval_every_steps = 250
    c.checkpoint_every_steps = 2_000
    # Each evaluation interval as one program on data held on the device (fmnist_jax/feeds.py).
    c.steps_per_chunk = 250
    c.report = {  # what the report does with it: fmnist_jax/declarations.py
        "experiment": "mlp",
        "label": "MLP",
        "figure": "fig3_mlp.png",
        "title": "Figure 3: Multi-Layer-Perceptron",
        "claims": "overfits",
        "sweep_rates": "0,0.1,0.25,0.4,0.5",
    }
    return with_variant(c, variant)
