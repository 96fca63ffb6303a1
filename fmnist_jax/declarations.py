"""What each experiment declares for the report, the figures, the claims and the sweep: its
`c.report` block, whose fields docs/extending.md describes."""

import dataclasses
import math
import re
from collections.abc import Mapping

from fmnist_jax import config as config_lib
from fmnist_jax.errors import ConfigError


def _words(text) -> tuple[str, ...]:
    return tuple(w.strip() for w in str(text or "").split(",") if w.strip())


@dataclasses.dataclass(frozen=True)
class Declared:
    """One experiment's declarations ("" or () where it declares nothing)."""

    name: str
    label: str = ""
    figure: str = ""
    title: str = ""
    dropout_of: str = ""
    claims: tuple[str, ...] = ()
    sweep_rates: tuple[str, ...] = ()

    @property
    def runs(self) -> tuple[str, ...]:
        """What its figure draws and its paired claims read: the run without dropout first."""
        return (self.dropout_of, self.name) if self.dropout_of else (self.name,)


def _own_block(name: str, config: Mapping) -> dict | None:
    block = dict(config.get("report") or {})
    return block if block.get("experiment") == name else None


def declared(name: str, config: Mapping) -> Declared:
    """What experiment `name`'s config declares in its own report block."""
    block = _own_block(name, config)
    if block is None:
        return Declared(name)
    text = {f: str(block.get(f) or "") for f in ("label", "figure", "title", "dropout_of")}
    lists = {f: _words(block.get(f)) for f in ("claims", "sweep_rates")}
    return Declared(name, **text, **lists)


def _figure_number(d: Declared | None) -> float:
    found = re.search(r"\d+", d.title) if d is not None and d.figure else None
    return int(found.group()) if found else math.inf


def experiments(runs: Mapping | None = None) -> list[Declared]:
    """Every experiment's declarations, from its run in `runs` where that recorded its own, else
    its file; in the report's order (figure number, dropout variant after its base, name)."""
    found = {}
    for name in config_lib.experiment_names():
        run = (runs or {}).get(name)
        recorded = run is not None and _own_block(name, run.config) is not None
        found[name] = declared(name, run.config if recorded else config_lib.load_experiment(name))
    for d in found.values():
        if d.dropout_of and d.dropout_of not in found:
            raise ConfigError(
                f"experiment {d.name!r}: report.dropout_of={d.dropout_of!r} is no experiment"
            )
    return sorted(
        found.values(),
        key=lambda d: (_figure_number(found.get(d.dropout_of, d)), bool(d.dropout_of), d.name),
    )


def figures(declared_list: list[Declared]) -> list[Declared]:
    """The experiments that declare a figure, in the figures' order."""
    return sorted((d for d in declared_list if d.figure), key=lambda d: (_figure_number(d), d.name))
