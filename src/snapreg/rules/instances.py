"""Instance names as plain strings: ``"micro[3]"`` split, sorted and built.

Instances are handled as strings (``"micro[3]"``) inside snapreg: a
``ymmsl.Reference`` hashes by building its string every time, which would dominate
the cost of a registration at a few thousand instances.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from snapreg.errors import UnknownInstanceError

#: More digits than any index of a model that fits in memory can have.
_MAX_INDEX_DIGITS = 18


def shortened(text: str, limit: int = 80) -> str:
    """Text for a message, cut in the middle when longer than ``limit``."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}...{text[-half:]}"


#: Names :func:`split_instance` remembers: every instance of a model of this size
#: (opening a run of 50,001 instances splits each name nine times).
_SPLIT_CACHE_SIZE = 2**17


@lru_cache(maxsize=_SPLIT_CACHE_SIZE)
def split_instance(instance: str) -> tuple[str, tuple[int, ...]]:
    """Split ``"micro[2][5]"`` into ``("micro", (2, 5))``.

    Raises:
        UnknownInstanceError: if the text is not an instance name.
    """
    name, bracket, rest = instance.partition("[")
    if not name:
        raise UnknownInstanceError(f"{instance!r} is not an instance name")
    if not bracket:
        return name, ()
    indices: list[int] = []
    for part in ("[" + rest).split("]")[:-1]:
        digits = part[1:]
        if not part.startswith("[") or not (digits.isascii() and digits.isdigit()):
            raise UnknownInstanceError(
                f"{shortened(instance)!r} is not an instance name"
            )
        if len(digits) > _MAX_INDEX_DIGITS:  # no model has that many instances
            raise UnknownInstanceError(
                f"{shortened(instance)!r}: an index of {len(digits)} digits is out of"
                " range"
            )
        indices.append(int(digits))
    if not instance.endswith("]"):
        raise UnknownInstanceError(f"{instance!r} is not an instance name")
    return name, tuple(indices)


def instance_sort_key(instance: str) -> tuple[str, tuple[int, ...]]:
    """Sort key giving yMMSL's Reference order: names, then indices numerically."""
    return split_instance(instance)


def last_index(instance: str) -> int:
    """The last index of an instance name: 3 for ``"micro[3]"``."""
    return int(instance[instance.rindex("[") + 1 : -1])


def instance_name(component: str, indices: Iterable[int]) -> str:
    """The instance name of a component at the given indices."""
    return component + "".join(f"[{index}]" for index in indices)
