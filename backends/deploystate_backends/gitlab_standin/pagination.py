"""GitLab's offset pagination: ``page``/``per_page`` in, a slice and the X-* and Link headers out."""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100


class BadPageParameter(ValueError):
    """``page`` or ``per_page`` is not an integer; GitLab answers 400 ``{"error": "<name> is invalid"}``."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name} is invalid")
        self.name = name


def _integer(query: Mapping[str, Sequence[str]], name: str, default: int) -> int:
    values = query.get(name)
    if not values or values[-1] == "":
        return default
    try:
        return int(values[-1])
    except ValueError:
        raise BadPageParameter(name) from None


def paginate(
    items: Sequence[T],
    query: Mapping[str, Sequence[str]],
    base_url: str,
    raw_path: str,
) -> tuple[list[T], list[tuple[str, str]]]:
    """The requested page of ``items`` and the headers GitLab sends with it.

    Links repeat the request's own query (filters included) with only ``page`` changed, on the
    request's raw path, so an encoded project path stays encoded.
    """
    per_page = min(max(_integer(query, "per_page", DEFAULT_PER_PAGE), 1), MAX_PER_PAGE)
    page = max(_integer(query, "page", 1), 1)
    total = len(items)
    total_pages = max(math.ceil(total / per_page), 1)
    chunk = list(items[(page - 1) * per_page: page * per_page])

    def link(target: int) -> str:
        params = [(k, v) for k, vs in query.items() if k not in ("page", "per_page") for v in vs]
        params += [("page", str(target)), ("per_page", str(per_page))]
        return f"<{base_url}{raw_path}?{urllib.parse.urlencode(params)}>"

    links = []
    if page > 1:
        links.append(f'{link(min(page - 1, total_pages))}; rel="prev"')
    if page < total_pages:
        links.append(f'{link(page + 1)}; rel="next"')
    links.append(f'{link(1)}; rel="first"')
    links.append(f'{link(total_pages)}; rel="last"')
    headers = [
        ("Link", ", ".join(links)),
        ("X-Page", str(page)),
        ("X-Per-Page", str(per_page)),
        ("X-Total", str(total)),
        ("X-Total-Pages", str(total_pages)),
        ("X-Next-Page", str(page + 1) if page < total_pages else ""),
        ("X-Prev-Page", str(page - 1) if page > 1 else ""),
    ]
    return chunk, headers
