"""Imputation on several processes (devices, nodes) launched by Lightning Fabric.

The launch is Lightning's, as for ``cpgformer train``: ``--accelerator/--devices/--num-nodes`` start
the processes on one machine (the command re-runs itself once per extra device), and ``torchrun``
or SLURM ``srun`` start them on several (Lightning reads their environment variables).

How the work is shared
----------------------
* Rank 0 (the main rank) alone takes the output's lock, checks the inputs, creates or adopts the
  unfinished output directory and writes the per-chromosome files. The other ranks wait for it; if it
  fails (bad input, output locked by another process) they stop with exit code 2 and print nothing,
  so the error is reported once.
* Rank 0 lists the chunks (chromosome x site range, all cells) not yet written, in output order, and
  sends the list to every rank; rank ``r`` of ``W`` computes entries ``r, r + W, r + 2W, ...`` and
  writes each as its own file (temp + rename). A chunk's values are computed by the same code with
  the same tiles and batches whichever rank computes it, so the output does not depend on the
  number of ranks.
* After a barrier rank 0 computes any chunk still missing (none unless a rank was lost), writes the
  manifest and renames the directory into place. A run stopped anywhere (any rank killed) resumes
  with the same command, on any number of ranks, at the chunks not yet written.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cpgformer.utils.progress import bar

log = logging.getLogger(__name__)

#: test hook: "RANK:N" makes that rank exit abruptly after writing its N-th chunk (a lost process)
EXIT_HOOK = "CPGFORMER_TEST_RANK_EXIT"

#: how long ranks wait for each other at a barrier (a rank may finish its share long before another)
BARRIER_TIMEOUT = _dt.timedelta(days=7)


class MainRankFailed(SystemExit):
    """Raised on the other ranks when the main rank stopped before the work was shared (it reports
    the cause); exits with code 2 without a message of its own."""

    def __init__(self) -> None:
        super().__init__(2)


class Ranks:
    """This process's place among the ranks of a Fabric launch, and the few messages they exchange."""

    def __init__(self, fabric: Any) -> None:
        self.fabric = fabric
        self.rank = int(fabric.global_rank)
        self.world_size = int(fabric.world_size)
        self.pending: list[tuple[int, int]] | None = None
        self._ready_sent = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> Any:
        return self.fabric.device

    def _broadcast(self, obj: Any) -> Any:
        if self.world_size == 1:
            return obj
        return self.fabric.broadcast(obj, src=0)

    def ready(self, pending: list[tuple[int, int]]) -> None:
        """Main rank: the output is prepared; these chunks remain (sent to every rank)."""
        self._ready_sent = True
        self.pending = list(pending)
        self._broadcast(("ready", self.pending))

    def fail(self) -> None:
        """Main rank: stop the other ranks (when it fails before :meth:`ready`)."""
        if not self._ready_sent:
            self._ready_sent = True
            self._broadcast(("failed", None))

    def wait_ready(self) -> None:
        """Other ranks: wait for the main rank's :meth:`ready` (or exit quietly on its failure)."""
        status, pending = self._broadcast(None)
        if status != "ready":
            raise MainRankFailed()
        self.pending = [tuple(p) for p in pending]

    def barrier(self) -> None:
        if self.world_size > 1:
            self.fabric.barrier()

    def share(self, items: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """This rank's part of ``items``: round robin over the ordered list."""
        return list(items[self.rank :: self.world_size])


def share_chunks(ranks: Ranks, chunks: Any) -> None:
    """Every rank computes its share of the chunks not yet written; all meet at a barrier.

    ``chunks``: the output's :class:`cpgformer.impute.run._ChunkWriter`.
    """
    if ranks.is_main:
        for k in range(len(chunks.sources)):
            chunks.static(k)
        pending = [(k, i) for k, i in chunks.items() if not chunks.done(k, i)]
        ranks.ready(pending)
        log.info(
            "%d chunk(s) to impute on %d rank(s)%s",
            len(pending),
            ranks.world_size,
            f" ({len(chunks.items()) - len(pending)} written by an earlier run)"
            if len(pending) < len(chunks.items())
            else "",
        )
    assert ranks.pending is not None
    mine = ranks.share(ranks.pending)
    exit_after = _exit_hook(ranks.rank)
    with bar(len(mine), desc="imputing", unit="chunk") if ranks.is_main else _Quiet() as progress:
        for n, (k, i) in enumerate(mine, start=1):
            if not chunks.done(k, i):
                chunks.compute(k, i)
            progress.update(1)
            if exit_after is not None and n >= exit_after:
                os._exit(3)  # a lost process (test hook)
    ranks.barrier()


class _Quiet:
    """No progress display (ranks other than the main one)."""

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None


def _exit_hook(rank: int) -> int | None:
    text = os.environ.get(EXIT_HOOK)
    if not text:
        return None
    which, _, count = text.partition(":")
    return int(count or 1) if int(which) == rank else None


def make_fabric(
    accelerator: str = "auto",
    devices: str | int = "auto",
    num_nodes: int = 1,
    strategy: str = "auto",
) -> Any:
    """A launched Fabric for the given devices (this process is then one of the ranks)."""
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    from cpgformer.training.fit import _devices

    dev = _devices(devices)
    chosen: Any = strategy
    if strategy in ("auto", "ddp") and (num_nodes > 1 or dev not in (1, "1") or _launched()):
        chosen = DDPStrategy(timeout=BARRIER_TIMEOUT)  # processes started by the launcher or us
    fabric = Fabric(accelerator=accelerator, devices=dev, num_nodes=num_nodes, strategy=chosen)
    if logging.getLogger("cpgformer").getEffectiveLevel() > logging.DEBUG:  # banners with -vv only
        logging.getLogger("lightning.fabric.utilities.distributed").setLevel(logging.WARNING)
    fabric.launch()
    return fabric


def _launched() -> bool:
    """Started by torchrun or as a SLURM task of a multi-task step."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return True
    return int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1


def impute_distributed(
    store: Any,
    model: Any,
    out: str | os.PathLike[str],
    options: Any = None,
    *,
    accelerator: str = "auto",
    devices: str | int = "auto",
    num_nodes: int = 1,
    strategy: str = "auto",
    regions: Any = None,
) -> Any:
    """:func:`cpgformer.impute.impute` (or, with ``regions``, region sums) on every rank of a
    Fabric launch. Returns the output on the main rank and None on the others."""
    from cpgformer.impute.run import ImputeOptions, _impute, _model_path
    from cpgformer.utils.locks import output_lock
    from cpgformer.utils.outputs import check_output

    opts = options or ImputeOptions()
    out = Path(out)
    fabric = make_fabric(accelerator, devices, num_nodes, strategy)
    ranks = Ranks(fabric)
    try:
        if not ranks.is_main:
            return _impute(
                store, model, out, opts, device=ranks.device, ranks=ranks, regions=regions
            )
        kind = "imputed" if regions is None else "h5ad"
        try:
            inputs = [getattr(store, "path", store), _model_path(model), opts.fasta]
            inputs.append(getattr(regions, "source_path", None))
            check_output(out, kind, overwrite=opts.overwrite, inputs=inputs)
            with output_lock(out):  # the main rank owns the output; the others write chunks only
                return _impute(
                    store, model, out, opts, device=ranks.device, ranks=ranks, regions=regions
                )
        except BaseException:
            ranks.fail()
            raise
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
