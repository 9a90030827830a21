"""Which tabular format a file holds (sniffed, else by suffix), and whether it can be converted."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from jupyter_staging.errors import ConversionFailed
from jupyter_staging.formats.base import without_paths
from jupyter_staging.formats.compression import COMPRESSED_SUFFIXES, head, open_binary
from jupyter_staging.formats.fits import select_fits_hdu
from jupyter_staging.formats.votable import VOTableSource, votable_problem
from jupyter_staging.formats.votable_stream import votable_source

__all__ = ["detect_format", "is_table", "table_problem"]

#: Suffixes of FITS files.
_FITS_SUFFIXES = {".fits", ".fit", ".fts", ".fz"}
_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".ecsv": "ecsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".parq": "parquet",
    ".vot": "votable",
    ".votable": "votable",
    **dict.fromkeys(_FITS_SUFFIXES, "fits"),
}
_VOTABLE_ROOT = re.compile(rb"<(?:\w+:)?VOTABLE[\s>]")
_VOTABLE_TABLE = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?TABLE[\s>/]")


def _base_suffix(path: Path) -> str:
    """The format suffix, looking through one compression suffix (``x.csv.gz`` -> ``.csv``)."""
    name = path.name.lower()
    suffix = Path(name).suffix
    if suffix in COMPRESSED_SUFFIXES:
        suffix = Path(name[: -len(suffix)]).suffix
    return suffix


def _sniff(start: bytes) -> str | None:
    """The format the first bytes of a file show, or None."""
    if start.startswith(b"SIMPLE  ="):
        return "fits"
    if start.startswith(b"PAR1"):
        return "parquet"
    text = start.lstrip(b"\xef\xbb\xbf").lstrip()
    if text.startswith(b"# %ECSV"):
        return "ecsv"
    if text.startswith(b"<") and _VOTABLE_ROOT.search(text):
        return "votable"
    return None


def detect_format(path: Path) -> str | None:
    """The tabular format of ``path``: ``'csv' | 'tsv' | 'fits' | 'votable' | 'ecsv' | 'parquet'``, or None.

    The first 64 KiB are sniffed first (through ``.gz``/``.bz2``/``.zst`` compression): FITS starts with
    ``SIMPLE  =`` (FITS Standard 4.0 §4.4.1.1), Parquet with ``PAR1``, ECSV with ``# %ECSV``, and a VOTable
    is XML with a ``VOTABLE`` root element. Otherwise the suffix decides (``.csv``, ``.tsv``/``.tab``,
    ``.ecsv``, ``.parquet``/``.pq``, ``.fits``/``.fit``/``.fts``/``.fz``, ``.vot``/``.votable``, each
    optionally followed by a compression suffix). ``.xml`` counts only when it sniffs as a VOTable.
    None means not a table this module converts (an image, a text file, an unknown suffix, a folder).
    Never raises for an unreadable path: the suffix alone decides then.
    """
    path = Path(path)
    if path.is_dir():
        return None
    sniffed = _sniff(head(path))
    if sniffed is not None:
        return sniffed
    return _SUFFIX_FORMATS.get(_base_suffix(path))


def is_table(path: Path, hdu: int | str | None = None) -> bool:
    """True when :func:`jupyter_staging.formats.convert.convert_to_parquet` can convert ``path`` (with
    this ``hdu``): :func:`table_problem` finds none. Never raises."""
    return table_problem(path, hdu) is None


def table_problem(path: Path, hdu: int | str | None = None) -> str | None:
    """Why :func:`jupyter_staging.formats.convert.convert_to_parquet` cannot convert ``path`` (with this
    ``hdu``), for a notice: ``"not a table"``, or ``"not a readable FITS file (<astropy's words>)"`` /
    ``"not a readable VOTable file (<astropy's words>)"`` for a damaged one (a cut gzip stream, a header
    or XML cut short); None when it can.

    FITS files are opened (headers only) and need a binary or ASCII table HDU (or ``hdu`` must name one);
    an image-only FITS file is not a table. VOTables need a ``TABLE`` element and astropy must parse them:
    a VOTable astropy rejects is staged as it is, named as unreadable (the file is parsed whole, which
    takes as long as converting it, unless it is converted a slice of rows at a time: then its first
    slice is parsed). Parquet files need a readable footer; CSV, TSV and ECSV files are taken on
    trust (their content is only checked while converting). Never raises.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt is None or not path.is_file():
        return "not a table"
    try:
        if fmt == "fits":
            _check_fits(path, hdu)
        elif fmt == "votable":
            return _check_votable(path, hdu)
        elif fmt == "parquet":
            pq.ParquetFile(path).close()
    except ConversionFailed:
        return "not a table"
    except (OSError, ValueError, EOFError, pa.ArrowException) as exc:
        words = without_paths(str(exc), path).strip() or type(exc).__name__
        return f"not a readable {fmt.upper() if fmt == 'fits' else fmt.capitalize()} file ({words})"
    return None


def _check_fits(path: Path, hdu: int | str | None) -> None:
    """Raises :class:`ConversionFailed` (or what astropy raises) unless ``path`` has that table HDU."""
    # astropy is heavy (about a second to import): loaded only when a FITS file is looked at
    from astropy.io import fits

    with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
        try:
            select_fits_hdu(hdul, hdu, path.name)
        except ConversionFailed:
            # Nothing but a primary header without data that promised extensions (EXTEND), or a plain file
            # not whole 2880-byte blocks: astropy stops quietly at an extension cut short (a gzip stream
            # or a header cut part way), so the file is damaged, not an image.
            promised = hdul[0].header.get("EXTEND") or path.stat().st_size % 2880
            if len(hdul) == 1 and not hdul[0].header.get("NAXIS") and promised:
                raise ValueError(
                    "nothing after the primary header: the file may have been cut short"
                ) from None
            raise


def _check_votable(path: Path, hdu: int | str | None) -> str | None:
    """Why the VOTable cannot be converted (:func:`~jupyter_staging.formats.votable.votable_problem`), or
    None; with ``hdu``, raises :class:`ConversionFailed` unless that table exists. A file without a
    ``TABLE`` element is not parsed; one read a slice at a time (:mod:`~jupyter_staging.formats.
    votable_stream`) is parsed up to the end of its first slice of rows only."""
    if hdu is not None:
        VOTableSource(path, hdu, chunk_rows=1).close()
        return None
    if not _has_votable_table(path):
        return "not a table"
    try:
        # a VOTable read a slice at a time is checked on its first slice of rows, not parsed whole
        source = votable_source(path, None, chunk_rows=1)
    except ConversionFailed:
        return votable_problem(path)  # astropy's own words, from the whole file
    source.close()
    return None


def _has_votable_table(path: Path) -> bool:
    """Whether the XML text contains a ``TABLE`` element, scanning in 1 MiB blocks."""
    tail = b""
    with open_binary(path) as fh:
        while block := fh.read(1024 * 1024):
            if _VOTABLE_TABLE.search(tail + block):
                return True
            tail = block[-64:]
    return False
