"""Readable, container-agnostic names for pytree key paths.

A dataclass field, a dict key and a namedtuple field all become their plain name, so trees that
went through a checkpoint (where dataclasses and namedtuples are stored as dicts) compare by path.
"""


def names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def show(path) -> str:
  return "/".join(names(path))
