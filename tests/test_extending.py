"""docs/extending.md runs as written: every ```python block, in order, in one namespace (a new
model class and its experiment, a population of it, an optax optimizer and schedule by name, a
claim declared by the experiment and checked on its seeds)."""

import re

import pytest

from fmnist_jax import models, verdicts
from tests.conftest import REPO

PAGE = "docs/extending.md"


def blocks() -> list[str]:
    found = re.findall(r"```python\n(.*?)```", (REPO / PAGE).read_text(), flags=re.DOTALL)
    assert len(found) >= 4, f"{PAGE} lost its examples"
    return found


@pytest.fixture
def page_namespace():
    namespace = {"__name__": "extending_page"}
    yield namespace
    models.MODELS.pop("wide_mlp", None)
    verdicts.CLAIMS.pop("small_gap", None)


def test_the_pages_examples_run_in_order(page_namespace):
    for i, code in enumerate(blocks()):
        exec(compile(code, f"{PAGE} block {i + 1}", "exec"), page_namespace)  # noqa: S102
    trained = page_namespace["trained"]
    assert type(trained.model).__name__ == "WideMLP" and trained.model.width == 1024
    history = page_namespace["history"]
    assert history["weight_decay"][0].tolist() == [1e-4, 1e-2]
    verdict = page_namespace["verdict"]  # the new claim, checked on the three seeds
    assert verdict.claim.startswith("The wide MLP ends with train and test accuracy within")
    assert verdict.total == 3 and verdict.status.startswith(("holds", "undecided", "does not"))
