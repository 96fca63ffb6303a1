"""The attack experiment on a trained run: restore, choose images, search, record, summarise.

`run(workdir, output, ...)` restores the run's model (`checkpoints.load_trained`), takes random
training images of its data set (`data.load`), runs every method's batch program
(`search.make_attack`) on the same images and targets (the slow methods, presets.SLOW_METHODS,
on the first `slow_images` of them), and writes into `output`:

    summary.json   per method: success rate, steps, L0/L1/L2/L-inf of the successes, clean
                   accuracy, wall and compile time, attacks/s, its images, L1 reading and step
                   budget; `default_method` (the first method: the exercise's rule by
                   default) and its rule in words; the configs and the run's facts
    records.csv    one row per (method, image): RECORD_FIELDS
    figure.png     Figure 7 for the first method (`plotting.adversarial.plot_examples`)
    figure-<m>.png the same for each other method
    minl1.png      the exercise's rule, the default method (sign) and minl1 side by side:
                   noise, changed pixels, adversarial image (`plot_comparison`), when minl1 ran
    curves.png     p(target) against steps, histograms of steps and L1 (`plot_curves`)

Progress goes to absl's log; the command line is `python -m fmnist_jax.adversarial`.
"""

import csv
import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fmnist_jax import checkpoints, population, rundir
from fmnist_jax import data as data_lib
from fmnist_jax.adversarial.presets import (
    DEFAULT_METHOD,
    DEFAULT_METHODS,
    SLOW_IMAGES,
    SLOW_METHODS,
    AttackConfig,
    describe,
    method_config,
    pool_size_for,
)
from fmnist_jax.adversarial.search import (
    AttackResult,
    draw_targets,
    make_attack,
    p_target_history,
)
from fmnist_jax.errors import UsageError

RECORD_FIELDS = (
    "method", "index", "label", "target", "steps", "success", "p_target", "predicted",
    "p_predicted", "clean_predicted", "clean_p_predicted", "l0", "l1", "l2", "linf", "l1_weight",
)  # fmt: skip
EXAMPLES = 4  # rows of Figure 7
COMPARED = 3  # rows of minl1.png
REPLAYED = 8  # searches drawn in curves.png, at most two of them failed
REPLAY_STEPS = 1000  # their first steps only (the exercise's rule may take 3,000)
CLASS_NAMES = data_lib.CLASS_NAMES


# --------------------------------------------------------------------------- inputs


def parse_members(text: str, workdir) -> list[int]:
    """--member: "all" (every member of the run in `workdir`) or one index; UsageError else.
    A missing or out-of-range member is refused later, when its checkpoint is read."""
    if text == "all":
        config = ml_collections.ConfigDict(rundir.read_config(Path(workdir)))
        return list(range(population.num_members(config)))
    if not text.isdigit():
        raise UsageError(f"--member must be a member index (0, 1, ...) or all, got {text!r}")
    return [int(text)]


def choose_images(key: jax.Array, num_train: int, num_images: int) -> np.ndarray:
    """`num_images` distinct random training indices."""
    if not 0 < num_images <= num_train:
        raise UsageError(
            f"--num_images must lie in 1..{num_train} (the training split's size), got {num_images}"
        )
    return np.asarray(jax.random.choice(key, num_train, (num_images,), replace=False))


def load_attack_data(workdir, num_images: int, seed: int, member: int = 0):
    """(logits_fn, images, labels, indices, target key): member `member`'s model of the run
    and `num_images` random training images, as float32 in [0, 1]. The images and targets
    depend on `seed` and the data only, so every member of every run gets the same ones."""
    model_config, model, params = checkpoints.load_trained(workdir, replica=member)
    split = data_lib.load(model_config).train
    index_key, target_key = jax.random.split(jax.random.key(seed))
    indices = choose_images(index_key, len(split["targets"]), num_images)
    images = jnp.asarray(data_lib.to_model_inputs(split["inputs"][indices]))
    labels = jnp.asarray(split["targets"][indices], jnp.int32)

    def logits_fn(x):
        return model.apply({"params": params}, x, train=False)

    return logits_fn, images, labels, indices, target_key


def timed_attack(
    logits_fn, config: AttackConfig, pool_size: int, images, labels, key, targets=None
):
    """(result, compile seconds, run seconds) of one batched search."""
    attack = make_attack(logits_fn, config, pool_size)
    args = attack.arguments(images, labels, key, targets)
    start = time.perf_counter()
    compiled = attack.program.lower(*args).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    result = jax.block_until_ready(compiled(*args))
    return result, compile_s, time.perf_counter() - start


# --------------------------------------------------------------------------- records and summary


def to_records(method: str, result: AttackResult, indices, labels) -> list[dict]:
    """One dict per sample: source index, true label, target, steps, success, norms, ..."""
    fields = result._asdict()
    host = {k: np.asarray(v) for k, v in fields.items() if k != "adversarial" and v is not None}
    host["target"] = host.pop("targets")
    records = []
    for i in range(len(indices)):
        row = {"method": method, "index": int(indices[i]), "label": int(labels[i])}
        for field in RECORD_FIELDS[3:]:
            if field not in host:  # a result without per-search weights
                row[field] = None
                continue
            value = host[field][i]
            row[field] = bool(value) if field == "success" else value.item()
        records.append(row)
    return records


def _stats(values: list[float], name: str) -> dict:
    """mean_<name> and median_<name>; None for no values."""
    if not values:
        return {f"mean_{name}": None, f"median_{name}": None}
    return {f"mean_{name}": float(np.mean(values)), f"median_{name}": float(np.median(values))}


def summarize(records: list[dict], wall_time_s: float, compile_time_s: float) -> dict:
    """success rate, steps, noise norms of the successful samples, clean accuracy, speed."""
    won = [r for r in records if r["success"]]
    summary = {
        "success_rate": len(won) / len(records),
        **_stats([r["steps"] for r in won], "steps"),
    }
    for norm in ("l0", "l1", "l2", "linf"):
        summary.update(_stats([r[norm] for r in won], norm))
    summary.update(
        mean_p_target=float(np.mean([r["p_target"] for r in records])),
        clean_accuracy=float(np.mean([r["clean_predicted"] == r["label"] for r in records])),
        wall_time_s=round(wall_time_s, 3),
        compile_time_s=round(compile_time_s, 3),
        attacks_per_sec=round(len(records) / wall_time_s, 2),
    )
    return summary


def format_summary(s: dict) -> str:
    """One progress line: success rate, median steps, L1 and L-inf, clean accuracy, speed."""

    def fmt(v):
        return "n/a" if v is None else f"{v:.4g}"

    return (
        f"success {s['success_rate']:.1%}, median steps {fmt(s['median_steps'])}, median L0"
        f" {fmt(s['median_l0'])}, L1 {fmt(s['median_l1'])}, L2 {fmt(s['median_l2'])}, Linf"
        f" {fmt(s['median_linf'])}, clean accuracy"
        f" {s['clean_accuracy']:.1%}, {s['attacks_per_sec']:.1f} attacks/s"
    )


def write_records(path: Path, records: list[dict]) -> None:
    """records.csv: one row per (method, image), columns RECORD_FIELDS."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RECORD_FIELDS)
        writer.writeheader()
        writer.writerows(records)


# --------------------------------------------------------------------------- the experiment


def method_images(name: str, num_images: int, slow_images: int) -> int:
    """How many of the chosen images `name` attacks: the first `slow_images` for the slow
    methods (presets.SLOW_METHODS), all of them for the others."""
    return min(num_images, slow_images) if name in SLOW_METHODS else num_images


def method_facts(config: AttackConfig, num_images: int) -> dict:
    """What a method's numbers were measured with: its images, L1 reading and step budget."""
    return {
        "num_images": num_images,
        "l1_reduction": config.l1_reduction if config.l1_weight > 0 else None,
        "max_steps": config.max_steps,
    }


def run(
    workdir,
    output,
    num_images: int = 1000,
    seed: int = 0,
    methods: list[str] | None = None,
    pool_size: int | None = None,
    slow_images: int = SLOW_IMAGES,
    member: int = 0,
    **overrides,
) -> dict:
    """Attacks `num_images` random training images of `workdir`'s model with each method
    (DEFAULT_METHODS unless given; the slow ones on the first `slow_images` of them, same
    targets); writes summary.json, records.csv and the figures into `output` and returns the
    summary. The first method is the reported one (`default_method`, Figure 7). `pool_size`
    (slots per local device; the images are split over the local devices) None:
    `presets.pool_size_for` the device's platform (32 on a CPU). `member`: which replica
    (population member) of the run is attacked. `overrides`
    (threshold, max_steps, epsilon, l1_reduction) go to `method_config`."""
    configs = {m: method_config(m, **overrides) for m in methods or DEFAULT_METHODS}
    if not (isinstance(slow_images, int) and slow_images > 0):
        raise UsageError(f"--slow_images must be a positive integer, got {slow_images!r}")
    logits_fn, images, labels, indices, key = load_attack_data(workdir, num_images, seed, member)
    pool_size = pool_size or pool_size_for(jax.local_devices()[0].platform)
    num_classes = jax.eval_shape(logits_fn, images[:1]).shape[-1]
    targets = draw_targets(key, labels, num_classes)  # what each program would draw from key
    results, records, summaries = {}, {}, {}
    for name, config in configs.items():
        k = method_images(name, num_images, slow_images)
        logging.info("%s: attacking %d training images of %s, member %d", name, k, workdir, member)
        result, compile_s, run_s = timed_attack(
            logits_fn, config, pool_size, images[:k], labels[:k], key, targets[:k]
        )
        results[name] = result
        records[name] = to_records(name, result, indices[:k], np.asarray(labels[:k]))
        summaries[name] = {**summarize(records[name], run_s, compile_s), **method_facts(config, k)}
        logging.info("%s: %s", name, format_summary(summaries[name]))
    facts = {"num_images": num_images, "slow_images": min(num_images, slow_images), "seed": seed}
    facts.update(workdir=str(workdir), member=member, pool_size=pool_size)
    summary = attack_summary(summaries, configs, facts)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    rundir.write_json(output / "summary.json", summary)
    write_records(output / "records.csv", [r for rows in records.values() for r in rows])
    written = write_figures(output, logits_fn, images, results, configs, records)
    logging.info("wrote summary.json, records.csv, %s to %s", ", ".join(written), output)
    return summary


def attack_summary(summaries: dict, configs: dict, facts: dict) -> dict:
    """summary.json: each method's numbers, the first method as the default with its rule and
    threshold, every method's config, `facts` (images, seed, workdir, member, pool) and the
    devices."""
    main = next(iter(configs))
    return {
        "methods": summaries,
        "default_method": main,
        "default_rule": describe(configs[main]),
        "configs": {m: dataclasses.asdict(c) for m, c in configs.items()},
        **facts,
        "threshold": configs[main].threshold,
        "pool_devices": len(jax.local_devices()),
        "device": str(jax.devices()[0].device_kind),
    }


def pick_examples(results: dict, count: int) -> np.ndarray:
    """Up to `count` samples every result reached its target on (the first ones when none)."""
    n = min(len(r.success) for r in results.values())
    won = np.ones(n, bool)
    for r in results.values():
        won &= np.asarray(r.success)[:n]
    picks = np.flatnonzero(won)[:count]
    return picks if len(picks) else np.arange(min(count, n))


def write_figures(output: Path, logits_fn, images, results, configs, records) -> list[str]:
    """figure.png (Figure 7 of the first method), figure-<method>.png for the others,
    minl1.png (the exercise's rule, the default method and minl1 side by side, when run),
    curves.png (searches of the first descent method replayed step by step, at most two failed
    ones among them). Returns the file names written."""
    from fmnist_jax.plotting import adversarial as plots

    names, written = list(results), []
    for i, name in enumerate(names):
        file = "figure.png" if i == 0 else f"figure-{name}.png"
        picks = pick_examples({name: results[name]}, EXAMPLES)
        title = f"targeted adversarial search, {name}:\n{describe(configs[name])}"
        plots.plot_examples(output / file, images, results[name], picks, CLASS_NAMES, title)
        written.append(file)
    compared = [m for m in dict.fromkeys(("exercise", DEFAULT_METHOD, "minl1")) if m in results]
    if "minl1" in results and len(compared) > 1:
        chosen = {m: results[m] for m in compared}
        picks = pick_examples(chosen, COMPARED)
        plots.plot_comparison(output / "minl1.png", images, chosen, picks, CLASS_NAMES)
        written.append("minl1.png")
    replayed = [m for m in names if configs[m].update != "minl1"]
    history, method = np.zeros((1, 0)), names[0]
    if replayed:
        method = replayed[0]
        history = replay(logits_fn, images, results[method], configs[method])
    plots.plot_curves(output / "curves.png", history, configs[method].threshold, records, method)
    return written + ["curves.png"]


def replay(logits_fn, images, result, config) -> np.ndarray:
    """p(target) step by step for REPLAYED searches (at most two failed), up to REPLAY_STEPS."""
    won = np.flatnonzero(np.asarray(result.success))
    failed = np.flatnonzero(~np.asarray(result.success))
    few = np.concatenate([won[: REPLAYED - min(2, len(failed))], failed])[:REPLAYED]
    steps = min(int(np.asarray(result.steps)[few].max()) or 1, REPLAY_STEPS)
    return np.asarray(p_target_history(logits_fn, images[few], result.targets[few], config, steps))
