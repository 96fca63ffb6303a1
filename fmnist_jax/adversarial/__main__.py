r"""Command line: exercise 2.5's targeted adversarial search on a trained run.

    python -m fmnist_jax.adversarial --workdir runs/cnn_dropout --output runs/adversarial \
        [--num_images 1000] [--seed 0] [--method exercise,gd,sign,adam,fgsm,pgd,minl1 | all] \
        [--threshold 0.95] [--max_steps N] [--epsilon 0.1] [--l1_reduction mean|sum] \
        [--pool_size N] [--slow_images 200] [--member K|all] [--verbose]

Writes summary.json, records.csv and the figures into --output (`runner.run`); the first method
is the reported one (Figure 7). Bad input ends in one line `error: ...` and exit 2.
"""

from absl import flags

from fmnist_jax import cli
from fmnist_jax.adversarial import presets

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "A training run's workdir (config.json + checkpoints/).")
    flags.DEFINE_string("output", None, "Folder for summary.json, records.csv and the figures.")
    flags.DEFINE_integer("num_images", 1000, "Random training images to attack.")
    flags.DEFINE_integer("seed", 0, "Seed of the image choice and of the target labels.")
    flags.DEFINE_string(
        "method",
        ",".join(presets.DEFAULT_METHODS),
        f"Comma-separated methods out of {', '.join(presets.METHODS)}, or all; the first is the"
        " reported one (Figure 7).",
    )
    flags.DEFINE_float("threshold", None, "Stop once p(target) reaches this (default 0.95).")
    flags.DEFINE_integer("max_steps", None, "Step budget of every iterative method.")
    flags.DEFINE_float("epsilon", None, "L-inf radius of fgsm and pgd (default 0.1).")
    flags.DEFINE_enum(
        "l1_reduction",
        None,
        presets.L1_REDUCTIONS,
        "sum: ||x' - x||_1 as written; mean: divided by the pixels, as PyTorch's L1Loss (the"
        " presets' default).",
    )
    flags.DEFINE_integer(
        "pool_size",
        None,
        f"Searches in flight at once (default: {presets.DEFAULT_POOL_SIZE} on a CPU,"
        f" {presets.ACCELERATOR_POOL_SIZE} on an accelerator).",
    )
    flags.DEFINE_integer(
        "slow_images",
        presets.SLOW_IMAGES,
        f"The slow methods ({', '.join(presets.SLOW_METHODS)}) attack the first this many of the"
        " images (same targets).",
    )
    flags.DEFINE_string(
        "member",
        "0",
        "Which member of the run to attack, or all: each into --output/<k>. The images and"
        " targets are the same for every member (--seed decides).",
    )


def main() -> None:
    methods = presets.parse_methods(FLAGS.method)
    from fmnist_jax.adversarial import runner  # after flag parsing: keeps --help fast

    runner.check_output(FLAGS.output)  # --member all writes into folders inside it
    passed = ("threshold", "max_steps", "epsilon", "l1_reduction", "pool_size", "slow_images")
    options = {name: FLAGS[name].value for name in passed}
    for member in runner.parse_members(FLAGS.member, FLAGS.workdir):
        output = FLAGS.output if FLAGS.member != "all" else f"{FLAGS.output}/{member}"
        runner.run(
            FLAGS.workdir, output, FLAGS.num_images, FLAGS.seed, methods, member=member, **options
        )


if __name__ == "__main__":
    cli.run(main, define_flags, required=["workdir", "output"])
