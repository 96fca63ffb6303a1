"""Exercise 2.3: the ConvNet on Fashion-MNIST, no dropout; it over-fits.

Model: Conv32 3x3 -> max-pool 2 -> Conv64 3x3 -> max-pool 2 -> Dense128 -> Dense10, Adam 1e-3,
batch 64, 15,000 steps (16 epochs). Expected: test accuracy about 91-92 % (offline copy); the
test loss reaches its minimum after a few thousand steps and then rises while the training loss
keeps falling (the exercise sees the turn near 10,000 iterations).

`c.report` declares Figure 4, the over-fitting and turn claims and the dropout-rate sweep
(fmnist_jax/declarations.py); an experiment starting from this one declares its own or none.

    make cnn            # = python -m fmnist_jax.main --config experiments/cnn.py --workdir runs/cnn
    python -m fmnist_jax.main --config experiments/cnn.py:test --workdir /tmp/cnn  # CPU smoke test
"""

from fmnist_jax.config import base_config, with_variant


def get_config(variant: str = ""):
    c = base_config()
    c.name = "cnn"
    c.model = "cnn"
    c.dropout_rate = 0.0
    c.num_train_steps = 15_000
    c.eval_every_steps = 500
    c.checkpoint_every_steps = 1_000
    # 250 steps as one program on the device-resident split (fmnist_jax/feeds.py; the speed-up
    # is in docs/speed-cpu.md).
    c.steps_per_chunk = 250
    c.report = {  # what the report does with it: fmnist_jax/declarations.py
        "experiment": "cnn",
        "label": "ConvNet",
        "figure": "fig4_cnn.png",
        "title": "Figure 4: ConvNet",
        "claims": "overfits,turn_step",
        "sweep_rates": "0,0.1,0.25,0.4,0.5",
    }
    return with_variant(c, variant)
