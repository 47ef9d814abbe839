"""tmcli on Ray (``pip install 'tmcli[ray]'``): the Ray session tmcli's commands run in, and
`CheckIds`, the Ray Data UDF an RL pipeline puts in its rollout dataset. Exported as ``tmcli.ray``.

Nothing here imports Ray at import time: ``tmcli --help`` and ``tmcli.ray.CheckIds`` stay light,
and Ray is imported by the functions that start or join a cluster.

``CheckIds`` gives every rollout row the verdict `tmcli.check_ids` gives one rollout, with the same
arithmetic (it calls `check_ids_batch` on each batch)::

    import ray
    import tmcli

    ds = ray.data.read_parquet("rollouts/")               # token_ids, prompt_token_ids, ...
    ds = ds.map_batches(tmcli.ray.CheckIds, fn_constructor_kwargs={"tokenizer": "qwen3"},
                        compute=ray.data.ActorPoolStrategy(size=8), batch_size=256)
    kept = ds.filter(lambda row: row["canonical"])        # drop, as `tmcli filter` would

``examples/ray_check_ids.py`` runs this end to end on a local Ray.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from tmcli.errors import TmcliError

INSTALL_HINT = "install it: pip install 'tmcli[ray]'"

# What `CheckIds` adds to each row.
CHECK_COLUMNS = ("canonical", "kind", "n_spans", "first_divergence", "causes",
                 "canonical_token_ids", "boundary_merge")


def import_ray():
    try:
        import ray
    except ImportError:
        raise TmcliError("Ray is not installed", hint=INSTALL_HINT) from None
    return ray


@contextmanager
def ray_session(address: str | None = None, *, quiet: bool = True) -> Iterator[Any]:
    """Ray, ready to use: the session this process already has (left running), the cluster at
    ``address`` (``--ray-address``; else ``$RAY_ADDRESS``), or a local Ray on this machine's
    cores started now and stopped at the end. Yields the ``ray`` module."""
    ray = import_ray()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        _check_reachable(address)  # Ray itself would retry for minutes
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict = {"address": address, "logging_level": logging.WARNING,
                    "log_to_driver": not quiet}
    if address is None:
        kwargs.update(address="local", include_dashboard=False)
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise TmcliError(f"cannot start or join {where} ({' '.join(str(exc).split())[:200]})",
                         hint="check --ray-address (e.g. HEAD:6379; `ray status` on the head "
                              "node), or leave it out to run on this machine") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds, with one line, when nothing listens at ``address`` (HOST:PORT, or
    ray://HOST:PORT for Ray Client); ``auto`` and ``local`` are Ray's own."""
    import socket

    if address in ("auto", "local"):
        return
    host, sep, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    hint = "give the head node's HOST:PORT (`ray start --head` prints it; default port 6379)"
    if not sep or not host or not port.isdigit():
        raise TmcliError(f"--ray-address '{address}' is not HOST:PORT", hint=hint)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise TmcliError(f"cannot reach the Ray cluster at {address} "
                         f"({exc.strerror or type(exc).__name__})", hint=hint) from None


def user_error(exc: BaseException) -> TmcliError | None:
    """The tmcli error a Ray task or actor raised, unwrapped from Ray's and Ray Data's wrappers
    (``RayTaskError.cause``, ``__cause__``); None when the failure was not one."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        inner = getattr(e, "cause", None)  # Ray's wrapper is an instance of its cause's class
        if isinstance(e, TmcliError) and not isinstance(inner, BaseException):
            return e
        todo.extend([e.__context__, e.__cause__, inner])  # the wrapped cause first
    return None


def _as_ids(value) -> list[int] | None:
    if value is None:
        return None
    return [int(t) for t in (value.tolist() if hasattr(value, "tolist") else value)]


class CheckIds:
    """A Ray Data UDF (a callable class for ``Dataset.map_batches`` with an actor pool): adds
    `CHECK_COLUMNS` to every row, the verdict of `tmcli.check_ids` on its ``ids_column`` in the
    context of its ``prompt_ids_column`` (None: no prompt).

    - ``canonical``: the ids are the tokenizer's own encoding of their text (a bool);
    - ``kind``: canonical, merged, lengthened, resegmented, invalid_utf8 or unknown_id;
    - ``n_spans``, ``first_divergence`` (the first differing completion token, -1 if none) and
      ``causes`` (one per span: `tmcli.measure.causes.CAUSES`);
    - ``canonical_token_ids``: the ids a pipeline that re-tokenizes the text trains on;
    - ``boundary_merge``: the completion's first token merges with the prompt's last.

    The tokenizer is an alias, path or hub id (as ``--tokenizer``); each actor builds its tables
    once. Batches come in any Ray Data format (``numpy``, ``pandas``, ``pyarrow``) and go back as
    a dict of columns."""

    def __init__(self, tokenizer: str, *, ids_column: str = "token_ids",
                 prompt_ids_column: str | None = "prompt_token_ids", context: bool = True):
        from tmcli.measure.rollout_check import reencoder_for

        self.tokenizer = tokenizer
        self.ids_column, self.prompt_ids_column = ids_column, prompt_ids_column
        self.context = context
        self.encoder = reencoder_for(tokenizer, context=context)

    def __call__(self, batch) -> dict:
        from tmcli.measure.rollout_check import check_ids_batch

        columns = _columns(batch)
        if self.ids_column not in columns:
            raise TmcliError(f"the dataset has no column '{self.ids_column}'",
                             hint="pass ids_column= (one of: " + ", ".join(columns) + ")")
        ids = [_as_ids(v) or [] for v in columns[self.ids_column]]
        prompts: Sequence = [None] * len(ids)
        if self.prompt_ids_column is not None:
            if self.prompt_ids_column not in columns:
                raise TmcliError(f"the dataset has no column '{self.prompt_ids_column}'",
                                 hint="pass prompt_ids_column= (or None for no prompt)")
            prompts = [_as_ids(v) for v in columns[self.prompt_ids_column]]
        checks = check_ids_batch(self.encoder, ids, list(prompts), context=self.context) \
            if ids else []
        out = dict(columns)
        out["canonical"] = [c.canonical for c in checks]
        out["kind"] = [c.kind for c in checks]
        out["n_spans"] = [len(c.spans) for c in checks]
        out["first_divergence"] = [c.spans[0].position if c.spans else -1 for c in checks]
        out["causes"] = [[s.cause for s in c.spans] for c in checks]
        out["canonical_token_ids"] = [c.canonical_ids for c in checks]
        out["boundary_merge"] = [c.boundary_merge for c in checks]
        return _typed(out, len(ids))


def _columns(batch) -> dict:
    """A batch as {name: sequence of values}, whatever Ray Data format it came in."""
    if hasattr(batch, "to_pydict"):  # pyarrow.Table
        return batch.to_pydict()
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas.DataFrame
        return {name: list(batch[name]) for name in batch.columns}
    return dict(batch)


def _typed(columns: dict, n: int):
    """The columns as a pyarrow Table (ragged id lists and empty batches typed exactly)."""
    import pyarrow as pa

    types = {"canonical": pa.bool_(), "kind": pa.string(), "n_spans": pa.int64(),
             "first_divergence": pa.int64(), "causes": pa.list_(pa.string()),
             "canonical_token_ids": pa.list_(pa.int64()), "boundary_merge": pa.bool_()}
    arrays = {}
    for name, values in columns.items():
        values = [_plain(v) for v in values]
        arrays[name] = pa.array(values, type=types.get(name)) if n or name in types \
            else pa.array(values)
    return pa.table(arrays)


def _plain(value):
    """numpy scalars and arrays as Python values, so pyarrow infers the same types as for lists."""
    return value.tolist() if hasattr(value, "tolist") else value
