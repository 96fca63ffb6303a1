"""The attack experiment on a trained run: restore, choose images, search, record, summarise
into summary.json, records.csv (RECORD_FIELDS) and the figures (`write_figures`)."""

import csv
import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from fmnist_jax import api, population, rundir
from fmnist_jax import data as data_lib
from fmnist_jax.adversarial import presets, search
from fmnist_jax.errors import UsageError

RECORD_FIELDS = (
    "method", "index", "label", "target", "steps", "success", "p_target", "predicted",
    "p_predicted", "clean_predicted", "clean_p_predicted", "l0", "l1", "l2", "linf", "l1_weight",
)  # fmt: skip
EXAMPLES = 4  # rows of Figure 7
COMPARED = 3  # rows of minl1.png
REPLAYED = 8  # searches drawn in curves.png, at most two of them failed
REPLAY_STEPS = 1000  # their first steps only (the exercise's rule may take 3,000)


def parse_members(text: str, workdir) -> list[int]:
    """--member: "all" (every member of the run in `workdir`) or one index (checked when its
    checkpoint is read); UsageError else."""
    if text == "all":
        config = ml_collections.ConfigDict(rundir.read_config(Path(workdir)))
        return list(range(population.num_members(config)))
    if not text.isdigit():
        raise UsageError(f"--member must be a member index (0, 1, ...) or all, got {text!r}")
    return [int(text)]


def check_output(output) -> None:
    """UsageError when --output, or a folder it would be made in, is an existing file."""
    for path in (Path(output), *Path(output).parents):
        if path.is_file():
            raise UsageError(f"--output {output} cannot be a folder: {path} is a file")


def choose_images(key: jax.Array, num_train: int, num_images: int) -> np.ndarray:
    """`num_images` distinct random training indices."""
    if not 0 < num_images <= num_train:
        raise UsageError(
            f"--num_images must lie in 1..{num_train} (the training split's size), got {num_images}"
        )
    return np.asarray(jax.random.choice(key, num_train, (num_images,), replace=False))


def load_attack_data(workdir, num_images: int, seed: int, member: int = 0):
    """(logits_fn, images, labels, indices, target key) of member `member` of the run; the
    images and targets depend on `seed` and the data only."""
    trained = api.restore(workdir, member=member)
    split = data_lib.load(trained.config).train
    index_key, target_key = jax.random.split(jax.random.key(seed))
    indices = choose_images(index_key, len(split["targets"]), num_images)
    images = jnp.asarray(data_lib.to_model_inputs(split["inputs"][indices]))
    labels = jnp.asarray(split["targets"][indices], jnp.int32)
    return trained.logits_fn(), images, labels, indices, target_key


def timed_attack(logits_fn, config: presets.AttackConfig, pool_size, images, labels, key, targets):
    """(result, compile seconds, run seconds) of one batched search."""
    attack = search.make_attack(logits_fn, config, pool_size)
    args = attack.arguments(images, labels, key, targets)
    start = time.perf_counter()
    compiled = attack.program.lower(*args).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    result = jax.block_until_ready(compiled(*args))
    return result, compile_s, time.perf_counter() - start


def to_records(method: str, result: search.AttackResult, indices, labels) -> list[dict]:
    """One dict of plain values per sample, keys RECORD_FIELDS (l1_weight None if absent)."""
    fields = result._asdict().items()
    host = {k: np.asarray(v) for k, v in fields if v is not None and k != "adversarial"}
    host["target"] = host.pop("targets")
    records = []
    for i in range(len(indices)):
        row = {"method": method, "index": int(indices[i]), "label": int(labels[i])}
        for field in RECORD_FIELDS[3:]:
            value = host[field][i].item() if field in host else None
            row[field] = bool(value) if field == "success" else value
        records.append(row)
    return records


def summarize(records: list[dict], wall_time_s: float, compile_time_s: float) -> dict:
    """success rate, steps, noise norms of the successful samples, clean accuracy, speed."""
    won = [r for r in records if r["success"]]
    summary = {"success_rate": len(won) / len(records)}
    for name in ("steps", "l0", "l1", "l2", "linf"):
        values = [r[name] for r in won]
        summary[f"mean_{name}"] = float(np.mean(values)) if won else None
        summary[f"median_{name}"] = float(np.median(values)) if won else None
    return summary | {
        "mean_p_target": float(np.mean([r["p_target"] for r in records])),
        "clean_accuracy": float(np.mean([r["clean_predicted"] == r["label"] for r in records])),
        "wall_time_s": round(wall_time_s, 3),
        "compile_time_s": round(compile_time_s, 3),
        "attacks_per_sec": round(len(records) / wall_time_s, 2),
    }


def format_summary(s: dict) -> str:
    """One progress line: success rate, median steps and norms, clean accuracy, speed."""

    def median(k):
        return "n/a" if s[f"median_{k}"] is None else f"{s[f'median_{k}']:.4g}"

    return (
        f"success {s['success_rate']:.1%}, median steps {median('steps')}, median L0"
        f" {median('l0')}, L1 {median('l1')}, L2 {median('l2')}, Linf {median('linf')}, clean"
        f" accuracy {s['clean_accuracy']:.1%}, {s['attacks_per_sec']:.1f} attacks/s"
    )


def write_records(path: Path, records: list[dict]) -> None:
    """records.csv: one row per (method, image), columns RECORD_FIELDS."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RECORD_FIELDS)
        writer.writeheader()
        writer.writerows(records)


def run(
    workdir, output, num_images=1000, seed=0, methods=None, pool_size=None,
    slow_images=presets.SLOW_IMAGES, member=0, **overrides,
) -> dict:  # fmt: skip
    """Attacks `num_images` random training images of member `member` of `workdir`'s run with
    each method (the first is the reported one), writes summary.json, records.csv and the
    figures into `output` and returns the summary; `overrides` go to `method_config`."""
    configs = {m: presets.method_config(m, **overrides) for m in methods or presets.DEFAULT_METHODS}
    if not (isinstance(slow_images, int) and slow_images > 0):
        raise UsageError(f"--slow_images must be a positive integer, got {slow_images!r}")
    check_output(output)
    logits_fn, images, labels, indices, key = load_attack_data(workdir, num_images, seed, member)
    pool_size = pool_size or presets.pool_size_for(jax.local_devices()[0].platform)
    num_classes = jax.eval_shape(logits_fn, images[:1]).shape[-1]
    targets = search.draw_targets(key, labels, num_classes)  # what each program would draw from key
    results, records, summaries = {}, {}, {}
    for name, config in configs.items():
        k = min(num_images, slow_images) if name in presets.SLOW_METHODS else num_images
        logging.info("%s: attacking %d training images of %s, member %d", name, k, workdir, member)
        result, compile_s, run_s = timed_attack(
            logits_fn, config, pool_size, images[:k], labels[:k], key, targets[:k]
        )
        results[name] = result
        records[name] = to_records(name, result, indices[:k], np.asarray(labels[:k]))
        l1_reduction = config.l1_reduction if config.l1_weight > 0 else None
        facts = {"num_images": k, "l1_reduction": l1_reduction, "max_steps": config.max_steps}
        summaries[name] = summarize(records[name], run_s, compile_s) | facts
        logging.info("%s: %s", name, format_summary(summaries[name]))
    main = next(iter(configs))
    summary = {
        "methods": summaries,
        "default_method": main,
        "default_rule": presets.describe(configs[main]),
        "configs": {m: dataclasses.asdict(c) for m, c in configs.items()},
        "num_images": num_images,
        "slow_images": min(num_images, slow_images),
        "seed": seed,
        "workdir": str(workdir),
        "member": member,
        "pool_size": pool_size,
        "threshold": configs[main].threshold,
        "pool_devices": len(jax.local_devices()),
        "device": str(jax.devices()[0].device_kind),
    }
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    rundir.write_json(output / "summary.json", summary)
    write_records(output / "records.csv", [r for rows in records.values() for r in rows])
    written = write_figures(output, logits_fn, images, results, configs, records)
    logging.info("wrote summary.json, records.csv, %s to %s", ", ".join(written), output)
    return summary


def pick_examples(results: dict, count: int) -> np.ndarray:
    """Up to `count` samples every result reached its target on (the first ones when none)."""
    n = min(len(r.success) for r in results.values())
    won = np.all([np.asarray(r.success)[:n] for r in results.values()], axis=0)
    picks = np.flatnonzero(won)[:count]
    return picks if len(picks) else np.arange(min(count, n))


def write_figures(output: Path, logits_fn, images, results, configs, records) -> list[str]:
    """figure.png (Figure 7 of the first method), figure-<method>.png for the others, minl1.png
    (minl1 beside the exercise's rule and the default), curves.png; the files written."""
    from fmnist_jax.plotting import adversarial as plots

    names, written = list(results), []
    for i, name in enumerate(names):
        file = "figure.png" if i == 0 else f"figure-{name}.png"
        picks = pick_examples({name: results[name]}, EXAMPLES)
        title = f"targeted adversarial search, {name}:\n{presets.describe(configs[name])}"
        plots.plot_examples(
            output / file, images, results[name], picks, data_lib.CLASS_NAMES, title
        )
        written.append(file)
    compared = [
        m for m in dict.fromkeys(("exercise", presets.DEFAULT_METHOD, "minl1")) if m in results
    ]
    if "minl1" in results and len(compared) > 1:
        chosen = {m: results[m] for m in compared}
        picks = pick_examples(chosen, COMPARED)
        plots.plot_comparison(output / "minl1.png", images, chosen, picks, data_lib.CLASS_NAMES)
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
    return np.asarray(
        search.p_target_history(logits_fn, images[few], result.targets[few], config, steps)
    )
