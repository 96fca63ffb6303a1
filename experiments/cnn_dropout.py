"""Exercise 2.4.2: the ConvNet with dropout 0.25 after each conv-pool block.

Same as experiments/cnn.py apart from the two dropout layers. Expected: a smaller final
train-test loss gap than cnn, the test loss stays near its minimum, accuracy about the same or
slightly better. Its checkpoint is the model the adversarial search attacks (exercise 2.5).

`c.report` replaces cnn's: Figure 6 (cnn beside it), the dropout claims and the attack's.

    make cnn-dropout    # -> runs/cnn_dropout
"""

from fmnist_jax.config import load_experiment, with_variant


def get_config(variant: str = ""):
    c = load_experiment("cnn")
    c.name = "cnn_dropout"
    c.dropout_rate = 0.25
    c.report = {  # what the report does with it: fmnist_jax/declarations.py
        "experiment": "cnn_dropout",
        "label": "ConvNet",
        "figure": "fig6_cnn_dropout.png",
        "title": "Figure 6: ConvNet without vs with dropout",
        "dropout_of": "cnn",
        "claims": "dropout_gap,dropout_test_loss,slight_rise,train_test_same,attack_noise",
    }
    return with_variant(c, variant)
