"""The attack experiment on a trained run: restore, choose images, search, record, summarise.

`run(workdir, output, ...)` restores the run's model (`train.load_trained`), takes random
training images of its data set (`data.load`), runs every method's batch program
(`search.make_attack`) on the same images and targets, and writes into `output`:

    summary.json   per method: success rate, steps, L1/L2/L-inf of the successes, clean
                   accuracy, wall and compile time, attacks/s; the configs and the run's facts
    records.csv    one row per (method, image): RECORD_FIELDS
    figure.png     Figure 7 for the default method (`plotting.adversarial.plot_examples`)
    curves.png     p(target) against steps, histograms of steps and L1 (`plot_curves`)

Progress goes to absl's log; the command line is `python -m fmnist_jax.adversarial`.
"""

import csv
import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from fmnist_jax import data as data_lib
from fmnist_jax import rundir, train
from fmnist_jax.adversarial.presets import (
    DEFAULT_METHOD,
    DEFAULT_METHODS,
    DEFAULT_POOL_SIZE,
    AttackConfig,
    method_config,
)
from fmnist_jax.adversarial.search import AttackResult, make_attack, p_target_history
from fmnist_jax.errors import UsageError

RECORD_FIELDS = (
    "method", "index", "label", "target", "steps", "success", "p_target", "predicted",
    "p_predicted", "clean_predicted", "clean_p_predicted", "l0", "l1", "l2", "linf",
)  # fmt: skip
EXAMPLES = 4  # rows of Figure 7
REPLAYED = 8  # searches drawn in curves.png, at most two of them failed


# --------------------------------------------------------------------------- inputs


def choose_images(key: jax.Array, num_train: int, num_images: int) -> np.ndarray:
    """`num_images` distinct random training indices."""
    if not 0 < num_images <= num_train:
        raise UsageError(
            f"--num_images must lie in 1..{num_train} (the training split's size), got {num_images}"
        )
    return np.asarray(jax.random.choice(key, num_train, (num_images,), replace=False))


def load_attack_data(workdir, num_images: int, seed: int):
    """(logits_fn, images, labels, indices, target key): the run's model and `num_images`
    random training images, as float32 in [0, 1]."""
    model_config, model, params = train.load_trained(workdir)
    split = data_lib.load(model_config).train
    index_key, target_key = jax.random.split(jax.random.key(seed))
    indices = choose_images(index_key, len(split["targets"]), num_images)
    images = jnp.asarray(data_lib.to_model_inputs(split["inputs"][indices]))
    labels = jnp.asarray(split["targets"][indices], jnp.int32)

    def logits_fn(x):
        return model.apply({"params": params}, x, train=False)

    return logits_fn, images, labels, indices, target_key


def timed_attack(logits_fn, config: AttackConfig, pool_size: int, images, labels, key):
    """(result, compile seconds, run seconds) of one batched search."""
    attack = make_attack(logits_fn, config, pool_size)
    args = attack.arguments(images, labels, key)
    start = time.perf_counter()
    compiled = attack.program.lower(*args).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    result = jax.block_until_ready(compiled(*args))
    return result, compile_s, time.perf_counter() - start


# --------------------------------------------------------------------------- records and summary


def to_records(method: str, result: AttackResult, indices, labels) -> list[dict]:
    """One dict per sample: source index, true label, target, steps, success, norms, ..."""
    host = {k: np.asarray(v) for k, v in result._asdict().items() if k != "adversarial"}
    host["target"] = host.pop("targets")
    records = []
    for i in range(len(indices)):
        row = {"method": method, "index": int(indices[i]), "label": int(labels[i])}
        for field in RECORD_FIELDS[3:]:
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
    for norm in ("l1", "l2", "linf"):
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
        f"success {s['success_rate']:.1%}, median steps {fmt(s['median_steps'])}, median L1"
        f" {fmt(s['median_l1'])}, median Linf {fmt(s['median_linf'])}, clean accuracy"
        f" {s['clean_accuracy']:.1%}, {s['attacks_per_sec']:.1f} attacks/s"
    )


def write_records(path: Path, records: list[dict]) -> None:
    """records.csv: one row per (method, image), columns RECORD_FIELDS."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RECORD_FIELDS)
        writer.writeheader()
        writer.writerows(records)


# --------------------------------------------------------------------------- the experiment


def run(
    workdir,
    output,
    num_images: int = 1000,
    seed: int = 0,
    methods: list[str] | None = None,
    pool_size: int = DEFAULT_POOL_SIZE,
    **overrides,
) -> dict:
    """Attacks `num_images` random training images of `workdir`'s model with each method
    (DEFAULT_METHODS unless given); writes summary.json, records.csv, figure.png and
    curves.png into `output` and returns the summary. `overrides` (threshold, max_steps,
    epsilon, l1_reduction) go to `method_config`."""
    configs = {m: method_config(m, **overrides) for m in methods or DEFAULT_METHODS}
    logits_fn, images, labels, indices, key = load_attack_data(workdir, num_images, seed)
    results, records, summaries = {}, {}, {}
    for name, config in configs.items():
        logging.info("%s: attacking %d training images of %s", name, num_images, workdir)
        result, compile_s, run_s = timed_attack(logits_fn, config, pool_size, images, labels, key)
        results[name] = result
        records[name] = to_records(name, result, indices, np.asarray(labels))
        summaries[name] = summarize(records[name], run_s, compile_s)
        logging.info("%s: %s", name, format_summary(summaries[name]))
    main = DEFAULT_METHOD if DEFAULT_METHOD in configs else next(iter(configs))
    summary = {
        "methods": summaries,
        "default_method": main,
        "configs": {m: dataclasses.asdict(c) for m, c in configs.items()},
        "num_images": num_images,
        "seed": seed,
        "workdir": str(workdir),
        "threshold": configs[main].threshold,
        "pool_size": pool_size,
        "device": str(jax.devices()[0].device_kind),
    }
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    rundir.write_json(output / "summary.json", summary)
    write_records(output / "records.csv", [r for rows in records.values() for r in rows])
    write_figures(output, logits_fn, images, results[main], configs[main], main, records)
    logging.info("wrote summary.json, records.csv, figure.png, curves.png to %s", output)
    return summary


def write_figures(output: Path, logits_fn, images, result, config, method, records) -> None:
    """figure.png (Figure 7: up to EXAMPLES successful searches, else the first images) and
    curves.png (REPLAYED searches replayed step by step, at most two failed ones among them)."""
    from fmnist_jax.plotting.adversarial import plot_curves, plot_examples

    won = np.flatnonzero(np.asarray(result.success))
    picks = won[:EXAMPLES] if len(won) else np.arange(min(EXAMPLES, len(images)))
    title = f"targeted adversarial search ({method})"
    plot_examples(output / "figure.png", images, result, picks, data_lib.CLASS_NAMES, title)
    failed = np.flatnonzero(~np.asarray(result.success))
    few = np.concatenate([won[: REPLAYED - min(2, len(failed))], failed])[:REPLAYED]
    steps = int(np.asarray(result.steps)[few].max()) or 1
    history = p_target_history(logits_fn, images[few], result.targets[few], config, steps)
    plot_curves(output / "curves.png", np.asarray(history), config.threshold, records, method)
