"""Short listings of many items for log lines and error messages."""

from collections.abc import Iterable


def first_few(items: Iterable[object], shown: int = 5) -> str:
    """The first `shown` items, comma-separated, then ", ..." if there are more: "a, b, c, ..."."""
    items = list(items)
    return ", ".join(map(str, items[:shown])) + (", ..." if len(items) > shown else "")
