"""Command line: `runner.run` (docs/attack.md); bad input ends in one line `error: ...`, exit 2.

python -m fmnist_jax.adversarial --workdir RUN --output DIR [--method ...] [--verbose]
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
    methods = ", ".join(presets.METHODS)
    help_ = f"Comma-separated methods out of {methods}, or all; the first is the reported one."
    flags.DEFINE_string("method", ",".join(presets.DEFAULT_METHODS), help_)
    flags.DEFINE_float("threshold", None, "Stop once p(target) reaches this (default 0.95).")
    flags.DEFINE_integer("max_steps", None, "Step budget of every iterative method.")
    flags.DEFINE_float("epsilon", None, "L-inf radius of fgsm and pgd (default 0.1).")
    help_ = "sum: ||x' - x||_1 as written; mean (the presets'): over the pixels, as L1Loss."
    flags.DEFINE_enum("l1_reduction", None, presets.L1_REDUCTIONS, help_)
    sizes = f"{presets.DEFAULT_POOL_SIZE} on a CPU, {presets.ACCELERATOR_POOL_SIZE} else"
    flags.DEFINE_integer("pool_size", None, f"Searches in flight at once (default: {sizes}).")
    help_ = f"The slow methods ({', '.join(presets.SLOW_METHODS)}) attack the first this many."
    flags.DEFINE_integer("slow_images", presets.SLOW_IMAGES, help_)
    help_ = "The run's member to attack, or all: each into --output/<k> (same images, targets)."
    flags.DEFINE_string("member", "0", help_)


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
