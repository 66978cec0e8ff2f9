"""A bags folder in, slide embeddings out: one pipeline for every slide encoder.

``outdir`` receives:

- ``<slide>.pt``: the slide's embedding, float32 (E,), each written atomically;
- ``slide_embeddings.h5`` (or ``.parquet``): one table of every embedded slide (``slide``,
  ``embedding``), rebuilt at the end of each run;
- ``slide_embeddings_config.json``: the slide encoder, its weights and arguments, the bags'
  configuration, the check of the bags against what the model was trained on (and whether it
  was forced), licence, citation and provenance;
- ``slide_embeddings_report.json``: what this run did, slide by slide.

A run resumes: slides whose embedding exists are skipped (an interrupted write leaves only a
temporary file, removed by the next run). A folder holding embeddings of another
configuration is refused unless ``overwrite``. A bag that cannot be read or embedded is
reported and the run goes on with the others.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from histobag.bags.config import CONFIG_NAME, fingerprint, read_config
from histobag.bags.read import read_bag
from histobag.errors import ArgumentError, ConfigError, HistobagError
from histobag.files import atomic_path, remove_stale_temporaries, write_json_atomic
from histobag.io.bag_writers import get_writer
from histobag.optional import require
from histobag.slide_encoding.requirements import BagCheck, check_bags

#: Files of a slide-embeddings folder.
EMBEDDINGS_CONFIG = "slide_embeddings_config.json"
EMBEDDINGS_REPORT = "slide_embeddings_report.json"
TABLE_STEM = "slide_embeddings"
TABLE_FORMATS = ("h5", "parquet")


@dataclass
class SlideEmbeddingsReport:
    """What one :func:`generate_slide_embeddings` run did.

    Attributes:
        outdir: The embeddings folder.
        done: Slides embedded by this run.
        skipped: Slides whose embedding was already there.
        failed: Slides that could not be embedded, with the reason.
        table: The table of every embedded slide in ``outdir`` (None if there is none).
        check: The bags checked against the slide encoder's needs.
    """

    outdir: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    table: Path | None = None
    check: BagCheck = field(default_factory=BagCheck)

    @property
    def ok(self) -> bool:
        """Whether every slide has its embedding."""
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``slide_embeddings_report.json``)."""
        return {
            "outdir": str(self.outdir),
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "table": str(self.table) if self.table else None,
            "bags_check": self.check.to_dict(),
        }

    def summary(self) -> str:
        """One line: counts and where the table is."""
        where = f"; table: {self.table}" if self.table else ""
        return (
            f"{len(self.done)} slide(s) embedded, {len(self.skipped)} already done, "
            f"{len(self.failed)} failed{where}"
        )


def _identity(encoder: Any, bags_config: dict[str, Any] | None, writer: str) -> dict[str, Any]:
    """What decides the embeddings: the encoder, its weights and arguments, the bags."""
    kwargs = dict(encoder.dump_config().get("kwargs", {}))
    kwargs.pop("weights", None)  # counted by its digest, not by the spelling of its path
    return json.loads(
        json.dumps(
            {
                "slide_encoder": encoder.tag,
                "kwargs": kwargs,
                "weights_sha256": encoder.weights_sha256,
                "bags": fingerprint(bags_config) if bags_config else {"writer": writer},
            }
        )
    )


def _check_table_format(table: str) -> None:
    if table not in TABLE_FORMATS:
        raise ArgumentError(f"table must be one of {', '.join(TABLE_FORMATS)}, not {table!r}")
    if table == "h5":
        require("h5py", extra="h5", purpose="the slide_embeddings.h5 table (or table='parquet')")
    else:
        require("pyarrow", extra="analysis", purpose="the slide_embeddings.parquet table")


def generate_slide_embeddings(
    encoder: Any,
    bags_dir: str | os.PathLike[str],
    outdir: str | os.PathLike[str],
    *,
    slides: list[str] | None = None,
    writer: str | None = None,
    force: bool = False,
    overwrite: bool = False,
    table: str = "h5",
) -> SlideEmbeddingsReport:
    """Embed every bag of ``bags_dir`` with the slide encoder ``encoder`` into ``outdir``.

    The bags' ``bags_config.json`` is checked against what the encoder was trained on (tile
    encoder, tile size, magnification) before anything is embedded.

    Args:
        encoder: A :class:`~histobag.slide_encoding.SlideEncoderExtractor`.
        bags_dir: The bags folder (any registered writer's format).
        outdir: Where the embeddings go (see the module docstring for its files).
        slides: Only these slides (safe names, as in the bags' file names).
        writer: The bags' writer, for a folder without ``bags_config.json`` (then nothing can
            be checked, so ``force`` is needed).
        force: Embed bags that do not fit the encoder; the mismatches are recorded.
        overwrite: Replace embeddings of another configuration, and redo finished slides.
        table: ``"h5"`` (needs ``histobag[h5]``) or ``"parquet"`` (needs pyarrow).

    Raises:
        IncompatibleBagsError: The bags do not fit the encoder (and not ``force``).
        ConfigError: ``bags_dir`` has no ``bags_config.json`` (and no ``writer`` and
            ``force``), or ``outdir`` holds embeddings of another configuration.
    """
    _check_table_format(table)
    bags_dir, outdir = Path(bags_dir), Path(outdir)
    needs = getattr(encoder, "slide_input", None)
    if (bags_dir / CONFIG_NAME).is_file():
        bags_config: dict[str, Any] | None = read_config(bags_dir)
        check = check_bags(encoder.tag, needs, bags_config, force=force)
        writer = writer or bags_config["writer"]
    elif writer is not None and (force or needs is None):
        bags_config, check = None, BagCheck(("no bags_config.json: nothing checked",), force)
    else:
        raise ConfigError(
            f"{bags_dir} has no {CONFIG_NAME}, so what made its bags cannot be checked "
            f"against {encoder.tag}'s needs. Point at a folder made by histobag, or pass "
            "writer= and force=True."
        )
    names = list(slides) if slides is not None else get_writer(writer, bags_dir).slides()
    identity = _identity(encoder, bags_config, writer)
    config_file = outdir / EMBEDDINGS_CONFIG
    if config_file.is_file() and not overwrite:
        old = json.loads(config_file.read_text()).get("identity")
        if old != identity:
            raise ConfigError(
                f"{outdir} holds slide embeddings of another configuration ({old} vs "
                f"{identity}). Use another folder, or overwrite=True (--overwrite) to replace "
                "them."
            )
    outdir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(outdir)
    write_json_atomic(
        config_file,
        {
            "identity": identity,
            "slide_encoder": encoder.dump_config(),
            "num_features": encoder.num_features,
            "slide_input": needs.to_dict() if needs is not None else None,
            "bags_dir": str(bags_dir.resolve()),
            "bags_config": bags_config,
            "bags_check": check.to_dict(),
            "embedding_files": "<slide>.pt: float32 tensor (num_features,)",
            "license": encoder.license,
            "citation": encoder.citation,
            "provenance": encoder.provenance(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    report = SlideEmbeddingsReport(outdir, check=check)
    for slide in names:
        final = outdir / f"{slide}.pt"
        if final.exists() and not overwrite:
            report.skipped.append(slide)
            continue
        try:
            features, coords, convention = read_bag(bags_dir, slide, writer)
            embedding = encoder.embed_bag(features, coords, convention)
        except (HistobagError, OSError, ValueError, KeyError, RuntimeError) as exc:
            report.failed[slide] = f"{type(exc).__name__}: {exc}"
            continue
        _save_embedding(final, embedding)
        report.done.append(slide)
    report.table = write_table(outdir, table)
    write_json_atomic(
        outdir / EMBEDDINGS_REPORT,
        {**report.to_dict(), "finished": time.time(), "slide_encoder": encoder.tag},
    )
    return report


def _save_embedding(final: Path, embedding: Any) -> None:
    import torch

    with atomic_path(final) as tmp:
        torch.save(embedding.detach().float().cpu().clone(), tmp)


def read_slide_embeddings(outdir: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    """Every ``<slide>.pt`` embedding of a folder, sorted by slide: (slides, (S, E) float32)."""
    import torch

    files = sorted(p for p in Path(outdir).glob("*.pt") if not p.name.startswith("."))
    slides = [p.stem for p in files]
    rows = [torch.load(p, map_location="cpu", weights_only=True).numpy() for p in files]
    width = rows[0].shape[0] if rows else 0
    return slides, np.stack(rows).astype(np.float32) if rows else np.zeros((0, width), np.float32)


def write_table(outdir: str | os.PathLike[str], table: str = "h5") -> Path | None:
    """(Re)write ``slide_embeddings.<table>`` from the folder's per-slide files; None if the
    folder has none."""
    _check_table_format(table)
    outdir = Path(outdir)
    slides, embeddings = read_slide_embeddings(outdir)
    if not slides:
        return None
    final = outdir / f"{TABLE_STEM}.{table}"
    with atomic_path(final) as tmp:
        if table == "h5":
            h5py = require("h5py", extra="h5", purpose="the slide_embeddings.h5 table")
            with h5py.File(tmp, "w") as h5:
                h5.create_dataset(
                    "slide", data=np.array(slides, dtype=object), dtype=h5py.string_dtype()
                )
                h5.create_dataset("embedding", data=embeddings)
        else:
            pa = require("pyarrow", extra="analysis", purpose="the slide_embeddings.parquet table")
            pq = require("pyarrow.parquet", extra="analysis", purpose="the parquet table")
            column = pa.FixedSizeListArray.from_arrays(
                pa.array(embeddings.ravel(), type=pa.float32()), embeddings.shape[1]
            )
            pq.write_table(pa.table({"slide": slides, "embedding": column}), tmp)
    return final


def read_table(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    """A ``slide_embeddings.h5`` / ``.parquet`` table: (slides, (S, E) float32)."""
    path = Path(path)
    if path.suffix == ".h5":
        h5py = require("h5py", extra="h5", purpose="reading slide_embeddings.h5")
        with h5py.File(path, "r") as h5:
            slides = [s.decode() if isinstance(s, bytes) else str(s) for s in h5["slide"][:]]
            return slides, np.asarray(h5["embedding"][:], dtype=np.float32)
    pq = require("pyarrow.parquet", extra="analysis", purpose="reading slide_embeddings.parquet")
    data = pq.read_table(path)
    rows = data.column("embedding").to_pylist()
    return [str(s) for s in data.column("slide").to_pylist()], np.asarray(rows, dtype=np.float32)
