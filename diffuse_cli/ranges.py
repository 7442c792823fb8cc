"""Range checks of config keys by table, shared by train, sample and eval.

A command lists its keys with the values each allows (`{"batch_size": POSITIVE, ...}`), and
`check_ranges` refuses the first key outside its range in one line that names the key, the
value and what is allowed, before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from diffuse_cli.errors import UserError


@dataclass(frozen=True)
class Allowed:
    """The values a key may hold: `holds(value)`, and the words that end its refusal."""

    holds: Callable[[Any], bool]
    says: str  # "must be > 0", "is not one of: a, b"
    quoted: bool = False  # names show as 'name' (repr), numbers as they are

    def check(self, key: str, value: Any) -> None:
        if not self.holds(value):
            shown = repr(value) if self.quoted else value
            raise UserError(f"{key}={shown} {self.says}")


# a value is refused unless it holds, so nan is outside every range
POSITIVE = Allowed(lambda v: v > 0, "must be > 0")
NOT_NEGATIVE = Allowed(lambda v: v >= 0, "must be >= 0")
FRACTION = Allowed(lambda v: 0.0 <= v < 1.0, "must be in [0, 1)")  # a probability below 1


def one_of(*choices: str) -> Allowed:
    return Allowed(lambda v: v in choices, f"is not one of: {', '.join(choices)}", quoted=True)


def positive_or_null(null_means: str = "") -> Allowed:
    """> 0, or null (for the default that `null_means` describes)."""
    null = f"null: {null_means}" if null_means else "null"
    return Allowed(lambda v: v is None or v > 0, f"must be > 0 (or {null})")


def check_ranges(node: DictConfig, table: Mapping[str, Allowed], prefix: str = "") -> None:
    """UserError for the first key of `table` (in its order) whose value in `node` is outside
    its range; `prefix` is the node's place in the config ("trainer.", "eval.")."""
    for key, allowed in table.items():
        allowed.check(prefix + key, node[key])
