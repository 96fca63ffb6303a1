"""The interactive API (fmnist_jax.api): docs/api.md's snippet run as written, get_config's
overrides and errors, fit's history and state, restore + predict, attack with explicit targets,
and fit on 8 fake devices."""

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap

import flax.linen as nn
import jax
import numpy as np
import pytest

import fmnist_jax as fj
from fmnist_jax.api import as_images
from fmnist_jax.config import ConfigError
from fmnist_jax.errors import UsageError
from tests.conftest import REPO

API_PAGE = "docs/api.md"  # the interactive API's page; the README links to it
SNIPPET_WORKDIR = "runs/cnn_dropout_api"  # where the page's snippet trains, relative to its cwd


def docs_snippet() -> str:
    """The first ```python block of the API page (the one a reader copies first)."""
    text = (REPO / API_PAGE).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, f"no ```python block in {API_PAGE}"
    return blocks[0]


@pytest.fixture(scope="module")
def snippet(tmp_path_factory):
    """The docs/api.md snippet, executed once in an empty folder; returns its variables.

    It is the tiny "test" variant (synthetic data, 24 steps), so its run doubles as the trained
    model for the other tests of this module.
    """
    folder = tmp_path_factory.mktemp("api_docs")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        namespace = {"__name__": "docs_snippet"}
        code = compile(docs_snippet(), API_PAGE, "exec")
        exec(code, namespace)  # noqa: S102 - the page's own code, run as a reader runs it
    finally:
        os.chdir(cwd)
    namespace["workdir"] = folder / SNIPPET_WORKDIR
    return namespace


# --------------------------------------------------------------------------- get_config


def test_get_config_overrides_fields_of_the_experiment():
    config = fj.get_config("cnn_dropout", num_train_steps=7, learning_rate=0.01, seed=3)
    assert (config.name, config.dropout_rate) == ("cnn_dropout", 0.25)
    assert (config.num_train_steps, config.learning_rate, config.seed) == (7, 0.01, 3)
    assert config.dataset == "fashion_mnist"
    assert fj.get_config("cnn_dropout").num_train_steps == 15_000  # a fresh config each call


def test_get_config_test_variant_is_the_tiny_cpu_version():
    config = fj.get_config("cnn_dropout", "test", batch_size=16)
    assert config.dataset == "synthetic" and config.num_train_steps == 24
    assert config.batch_size == 16 and config.dropout_rate == 0.25


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lerning_rate": 0.1}, "unknown config field 'lerning_rate'"),
        ({"learning_rate": 0.0}, "learning_rate must be a finite number > 0"),
        ({"dropout_rate": 1.0}, "dropout_rate must lie in"),
        ({"model": "resnet"}, "config.model='resnet' is neither one of"),
        ({"num_train_steps": 0}, "num_train_steps must be a positive integer"),
        ({"checkpoint_every_steps": 7}, "must be a multiple of config.eval_every_steps"),
    ],
)
def test_get_config_rejects_unknown_fields_and_unusable_values(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        fj.get_config("cnn", **overrides)


def test_get_config_rejects_an_unknown_experiment():
    with pytest.raises(ConfigError, match="no experiment 'cnnn'"):
        fj.get_config("cnnn")


def test_get_config_wrong_type_is_a_config_error():
    with pytest.raises(ConfigError, match="num_train_steps='many'"):
        fj.get_config("cnn", num_train_steps="many")
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        fj.get_config("cnn", lerning_rate=0.1)


# --------------------------------------------------------------------------- docs snippet, fit


def test_readme_links_the_api_page():
    readme = (REPO / "README.md").read_text()
    assert f"({API_PAGE})" in readme, f"README.md does not link to {API_PAGE}"


def test_docs_snippet_runs(snippet):
    assert snippet["config"].name == "cnn_dropout"
    assert (snippet["workdir"] / "summary.json").is_file()
    assert snippet["probs"].shape == (4, 10)
    assert len(snippet["result"].adversarial) == 4


def test_fit_returns_the_history_and_the_final_state(snippet):
    config, state, history = snippet["config"], snippet["state"], snippet["history"]
    assert int(state.step) == config.num_train_steps
    assert history["workdir"] == SNIPPET_WORKDIR
    arrays = {k: v for k, v in history.items() if k != "workdir"}
    for key in ("step", "train_loss", "test_loss", "train_accuracy", "test_accuracy"):
        assert isinstance(arrays[key], np.ndarray), key
    assert {len(v) for v in arrays.values()} == {3}
    np.testing.assert_array_equal(arrays["step"], [8, 16, 24])
    assert np.all(np.isfinite(arrays["test_loss"]))
    logged = [json.loads(line) for line in (snippet["workdir"] / "metrics.jsonl").open()]
    np.testing.assert_allclose(arrays["test_loss"], [r["test_loss"] for r in logged])


def test_fit_on_a_finished_workdir_resumes_without_training_again(snippet):
    state, history = fj.fit(snippet["config"], snippet["workdir"], dataset=snippet["data"])
    assert int(state.step) == snippet["config"].num_train_steps
    for key in ("step", "test_loss", "test_accuracy"):
        np.testing.assert_array_equal(history[key], snippet["history"][key])


# --------------------------------------------------------------------------- restore, predict


@pytest.fixture(scope="module")
def trained(snippet):
    return fj.restore(snippet["workdir"])


def test_restore_gives_the_run_config_model_and_variables(trained, snippet):
    assert isinstance(trained, fj.Trained)
    assert trained.config.name == "cnn_dropout"
    assert trained.config.num_train_steps == snippet["config"].num_train_steps
    assert list(trained.variables) == ["params"]  # this model has no other collection
    same = fj.restore(snippet["workdir"], step=np.int64(24), member=0)  # numpy's too
    for a, b in zip(*map(jax.tree.leaves, (trained.variables, same.variables)), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(UsageError, match="member 1 does not exist"):
        fj.restore(snippet["workdir"], member=1)


class Normed(nn.Module):
    """A model with a second collection: batch statistics, used in inference mode."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.BatchNorm(use_running_average=not train)(x.reshape(len(x), -1))
        return nn.Dense(10)(x)


def test_predict_and_attack_apply_every_collection_of_the_variables():
    model, x = Normed(), np.random.default_rng(0).random((3, 28, 28, 1), np.float32)
    variables = model.init(jax.random.key(0), x, train=False)
    stats = variables["batch_stats"]["BatchNorm_0"]
    variables["batch_stats"]["BatchNorm_0"] = {"mean": stats["mean"] + 0.5, "var": stats["var"]}
    trained = fj.Trained(fj.get_config("mlp", "test"), model, variables)
    expected = jax.nn.softmax(model.apply(variables, x, train=False))
    np.testing.assert_allclose(fj.predict(trained, x), expected, atol=1e-6)
    result = fj.attack(trained, x, targets=[1, 2, 3], max_steps=5)
    clean = np.asarray(expected).max(axis=1)
    np.testing.assert_allclose(np.asarray(result.clean_p_predicted), clean, atol=1e-5)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda w: fj.get_config(3), "fj.get_config's experiment"),
        (lambda w: fj.get_config("cnn", 1), "fj.get_config's variant must be a str, got 1"),
        (
            lambda w: fj.fit("cnn"),
            "fj.fit's config must be a ConfigDict, got 'cnn'; make one with fj.get_config(",
        ),
        (
            lambda w: fj.fit(fj.get_config("mlp", "test"), dataset={"train": {}, "test": {}}),
            "fj.fit's dataset must be a Dataset, got a dict; load one with fj.load_data",
        ),
        (lambda w: fj.fit(fj.get_config("mlp", "test"), workdir=3), "fj.fit's workdir must be"),
        (lambda w: fj.load_data("cnn"), "fj.load_data's config must be a ConfigDict, got 'cnn'"),
        (
            lambda w: fj.predict(str(w), np.zeros((1, 28, 28))),
            "fj.predict's first argument must be a Trained, got '",
        ),
        (lambda w: fj.attack(w, np.zeros((1, 28, 28))), "call fj.restore(workdir) first"),
        (lambda w: fj.restore(None), "fj.restore's workdir must be a str or a Path, got None"),
        (
            lambda w: fj.restore(w, step="last"),
            "fj.restore's step must be an integer or None, got 'last'",
        ),
        (lambda w: fj.restore(w, member="1"), "fj.restore's member must be an integer, got '1'"),
    ],
)
def test_a_wrong_type_is_one_usage_error_line_saying_what_to_pass(call, message, snippet):
    with pytest.raises(UsageError, match=re.escape(message)) as error:
        call(snippet["workdir"])
    assert "\n" not in str(error.value)


def test_attack_refuses_a_method_or_seed_of_the_wrong_type(trained):
    with pytest.raises(UsageError, match="fj.attack's method must be a str, got 1"):
        fj.attack(trained, np.zeros((1, 28, 28)), method=1)
    with pytest.raises(UsageError, match="fj.attack's seed must be an integer, got None"):
        fj.attack(trained, np.zeros((1, 28, 28)), seed=None)


def test_predict_gives_probabilities_for_uint8_and_float_images(trained, snippet):
    images = snippet["data"].test["inputs"][:5]  # uint8 [5, 28, 28, 1]
    from_uint8 = fj.predict(trained, images[..., 0])  # uint8 [N, 28, 28]
    from_float = fj.predict(trained, images.astype(np.float32) / 255.0)  # float [N, 28, 28, 1]
    for probs in (from_uint8, from_float):
        assert probs.shape == (5, 10)
        assert np.all(probs >= 0)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(from_uint8, from_float, atol=1e-6)
    np.testing.assert_allclose(fj.predict(trained, images, batch_size=2), from_uint8, atol=1e-6)


@pytest.mark.parametrize("shape", [(5, 28, 28, 3), (28, 28), (5, 32, 32), (5, 784)])
def test_predict_rejects_a_wrong_shape(trained, shape):
    with pytest.raises(ValueError, match=re.escape("images must be [N, 28, 28] or [N, 28, 28, 1]")):
        fj.predict(trained, np.zeros(shape, np.uint8))


# --------------------------------------------------------------------------- attack


def test_the_documented_attack_returns_images_in_range_and_the_l1_of_their_noise(snippet):
    images, result = snippet["images"], snippet["result"]
    adversarial = np.asarray(result.adversarial)
    assert adversarial.shape == images.shape == (4, 28, 28, 1)
    assert adversarial.dtype == np.float32
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    noise = np.abs(adversarial - as_images(images)).reshape(4, -1).sum(axis=1)
    np.testing.assert_allclose(np.asarray(result.l1), noise, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """An MLP that has learned the synthetic classes (its test variant, 24 steps). docs/api.md's
    24-step ConvNet has not: it gives every class p ~ 0.1, from where no search reaches 0.95."""
    config = fj.get_config("mlp", "test")
    data = fj.load_data(config)
    workdir = tmp_path_factory.mktemp("learned")
    fj.fit(config, workdir, dataset=data, progress=False)
    return fj.restore(workdir), data.test


def test_attack_raises_p_target_from_the_original_to_the_threshold(learned):
    trained, test = learned
    images, targets, rows = test["inputs"][:4], np.array([1, 8, 9, 5]), np.arange(4)
    assert not np.any(test["targets"][:4] == targets)  # every target a wrong class
    before = fj.predict(trained, images)[rows, targets]
    result = fj.attack(trained, images, targets=targets)
    probs = fj.predict(trained, np.asarray(result.adversarial))  # the model, asked anew
    after = probs[rows, targets]
    assert np.all(before < 0.05), before  # the model was sure of another class
    assert np.all(after >= 0.95), (before, after)
    np.testing.assert_array_equal(probs.argmax(axis=1), targets)
    np.testing.assert_array_equal(np.asarray(result.success), [True] * 4)
    np.testing.assert_allclose(np.asarray(result.p_target), after, atol=1e-5)


# --------------------------------------------------------------------------- devices


def test_fit_on_eight_fake_devices(tmp_path):
    """The same call on 8 (fake CPU) devices: the batch is sharded over all of them."""
    code = textwrap.dedent(
        """
        import sys
        import fmnist_jax as fj
        config = fj.get_config(
            "cnn_dropout", "test", num_train_steps=2, eval_every_steps=2, checkpoint_every_steps=2
        )
        state, history = fj.fit(config, workdir=sys.argv[1])
        print("step", int(state.step), "entries", len(history["step"]))
        """
    )
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(REPO),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TF_ENABLE_ONEDNN_OPTS": "0",
        "JAX_COMPILATION_CACHE_DIR": os.environ.get(
            "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "fmnist-xla")
        ),
    }
    workdir = tmp_path / "run8"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(workdir)],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 2 entries 1" in proc.stdout
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["device_count"] == 8 and summary["steps"] == 2


# --------------------------------------------------------------------------- values out of range


@pytest.mark.parametrize(
    "images, message",
    [
        (np.full((2, 28, 28), 255.0, np.float32), r"must lie in \[0, 1\], got 255..255 \(0..255"),
        (np.full((2, 28, 28), -0.5), r"must lie in \[0, 1\], got -0.5..-0.5"),
        (np.full((2, 28, 28), np.nan, np.float32), "hold 1568 NaN or infinite pixels"),
        (np.full((2, 28, 28), np.inf), "NaN or infinite"),
        (np.zeros((2, 28, 28), np.int64), "dtype int64: pass uint8 grey levels"),
        (np.zeros((2, 28, 28), bool), "dtype bool"),
        (np.zeros((0, 28, 28), np.uint8), "images is empty"),
    ],
)
def test_predict_and_attack_refuse_values_out_of_range(trained, images, message):
    with pytest.raises(ConfigError, match=message):
        fj.predict(trained, images)
    with pytest.raises(ConfigError, match=message):
        fj.attack(trained, images, targets=[1] * len(images))


def test_fit_refuses_a_dataset_it_cannot_train_on(snippet, tmp_path):
    data = snippet["data"]
    bad = np.array(data.train["inputs"], np.float32)
    bad[0, 0, 0, 0] = np.nan
    poisoned = type(data)({**data.train, "inputs": bad}, data.test, "mine", "memory")
    with pytest.raises(ConfigError, match="dataset.train images hold 1 NaN"):
        fj.fit(snippet["config"], tmp_path / "run", dataset=poisoned)
    labels = np.array(data.test["targets"])
    labels[0] = 10
    wrong = type(data)(data.train, {**data.test, "targets": labels}, "mine", "memory")
    with pytest.raises(ConfigError, match="dataset.test labels must lie in 0..9"):
        fj.fit(snippet["config"], tmp_path / "run", dataset=wrong)
    assert not (tmp_path / "run").exists()
