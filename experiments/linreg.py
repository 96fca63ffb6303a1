"""Exercise 2.1: linear regression trained by mini-batch SGD at learning rate 1e-4.

The exercise does not say on which data, so the problem is synthetic with a known answer:
y = <w*, x> + b* + noise, 20 features, noise std 0.5, 10,000 training and 2,000 test examples.
Plain SGD, lr 1e-4 (the exercise's), batch 32, 60 epochs; one evaluation per epoch, so the
logged training loss is the mean loss over that epoch's mini-batches (the exercise's Figure 2).
Expected: the loss falls smoothly from about 20 towards the noise floor 0.25.

`c.report` declares its figure, Figure 2 (fmnist_jax/declarations.py).

    make linreg         # -> runs/linreg
"""

from fmnist_jax.config import base_config, with_variant


def get_config(variant: str = ""):
    c = base_config()
    c.name = "linreg"
    c.model = "linear_regression"
    c.dataset = "linear_regression"
    c.optimizer = "sgd"
    c.learning_rate = 1e-4
    c.batch_size = 32
    c.eval_batch_size = 2_000
    steps_per_epoch = c.regression.num_train // c.batch_size
    c.num_train_steps = 60 * steps_per_epoch
    c.eval_every_steps = steps_per_epoch
    c.checkpoint_every_steps = 10 * steps_per_epoch
    # Each epoch as one program on data held on the device (fmnist_jax/feeds.py).
    c.steps_per_chunk = steps_per_epoch
    c.report = {  # what the report does with it: fmnist_jax/declarations.py
        "experiment": "linreg",
        "figure": "fig2_linreg_loss.png",
        "title": "Figure 2: linear regression loss",
    }
    return with_variant(c, variant)
