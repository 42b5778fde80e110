"""Command-line values with one meaning everywhere: comma-separated lists and subset sizes.

Library functions take Python lists; the commands turn their comma-separated option text into
them here, so a bad item is named the same way by every command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from orthodiff.errors import OrthodiffError


def split_list(text: str | None, option: str, cast: Callable = str, choices: Iterable[str] | None = None,
               expected: str | None = None) -> list:
    """The items of a comma-separated option value, stripped, empty items dropped, each passed
    through ``cast`` (``int`` for numbers); an item that ``cast`` rejects (``ValueError``) or
    that is not one of ``choices`` is an OrthodiffError naming ``option`` and what was
    ``expected``."""
    allowed = None if choices is None else [str(c) for c in choices]
    expected = expected or (f"one of {', '.join(allowed)}" if allowed else NAMES.get(cast, "valid"))
    out = []
    for item in (item.strip() for item in (text or "").split(",")):
        if not item:
            continue
        try:
            if allowed is not None and item not in allowed:
                raise ValueError(item)
            out.append(cast(item))
        except ValueError:
            raise OrthodiffError(f"{option} {text!r}: {item!r} is not {expected} (comma-separated)") from None
    return out


NAMES = {int: "an integer", float: "a number"}


def subset_sizes(text: str | None, option: str = "--subsets") -> list[int | str]:
    """Label-efficiency subsets: numbers of training patients and/or ``all``."""
    return split_list(text, option, lambda item: item if item == "all" else int(item), expected="an integer or 'all'")
