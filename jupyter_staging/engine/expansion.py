"""Unpacking archives and decompressing files a job staged (``"unpack": true``, ``"decompress": true``).

MAST and other archives hand out bulk downloads as tarballs. With ``unpack`` an item named ``*.zip``,
``*.tar``, ``*.tar.gz`` / ``*.tgz``, ``*.tar.bz2`` or ``*.tar.xz`` is fetched into the job's scratch folder,
extracted there with the confinement rules of :mod:`jupyter_staging.formats.archives` (no absolute names,
no ``..``, no links, no devices, at most ``max_unpacked_bytes`` and a 100:1 expansion), and every
extracted file becomes a chunk below ``<archive stem>/`` — or, with ``convert``, its tables become Parquet
parts. With ``decompress`` an ``x.gz`` / ``x.bz2`` / ``x.xz`` becomes ``x``. The archive itself is not
kept.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path, PurePosixPath

from jupyter_staging.destinations.base import scratch_dir
from jupyter_staging.engine.conversion import ConvertingStager
from jupyter_staging.engine.models import DONE_STATES, ChunkState
from jupyter_staging.engine.schema import JobChunk
from jupyter_staging.engine.store import JobRecord
from jupyter_staging.engine.tablefolders import TABLE_VERSIONS
from jupyter_staging.errors import DestinationExists, SourceChanged
from jupyter_staging.formats.archives import (
    Extracted,
    archive_kind,
    compressed_kind,
    decompress,
    decompressed_name,
    unpack,
)
from jupyter_staging.formats.detect import detect_format, is_table
from jupyter_staging.safety.paths import check_output_name
from jupyter_staging.sources.base import Source, SourceItem

#: Most bytes one item may expand to when the host does not say (bytes).
DEFAULT_MAX_UNPACKED_BYTES = 100 * 1024**3
#: Largest expansion of an archive or compressed file (uncompressed bytes per compressed byte).
MAX_RATIO = 100.0

_ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tar", ".zip")


def archive_stem(name: str) -> str:
    """``data/bulk.tar.gz`` -> ``data/bulk``: the folder an archive's files are staged into."""
    path = PurePosixPath(name)
    lowered = path.name.lower()
    for suffix in _ARCHIVE_SUFFIXES:
        if lowered.endswith(suffix) and len(lowered) > len(suffix):
            return (path.parent / path.name[: -len(suffix)]).as_posix()
    return name


#: Resume key: ``{the folder an archive is unpacked into, or the file a compressed file is decompressed
#: into: that item}`` (:meth:`ExpandingStager._same_archive`).
EXPANDED_INTO = "expanded_into"


class ExpandingStager(ConvertingStager):
    """Adds ``unpack`` and ``decompress`` to :class:`~jupyter_staging.engine.conversion.ConvertingStager`."""

    def _expands(self) -> bool:
        """True when the job unpacks archives or decompresses files (chunks appear as files are made)."""
        request = self.resume.get("request") or {}
        return bool(request.get("unpack") or request.get("decompress"))

    def _stage_item(
        self, source: Source, rec: JobRecord, method: str, item: SourceItem, entry: str | None = None
    ) -> None:
        """Stage ``item`` of a job that unpacks / decompresses: expanded when it is an archive (or a
        compressed file), converted when the job converts, else as it is (one chunk)."""
        request = self.resume.get("request") or {}
        if self._resume_has("expanded", item.name):
            return
        if request.get("unpack") and archive_kind(item.name):
            self._expand(source, rec, item, entry, archive=True)
        elif request.get("decompress") and compressed_kind(item.name):
            self._expand(source, rec, item, entry, archive=False)
        elif rec.convert is not None:
            self._convert(source, rec, method, item, entry=entry)
            return
        else:
            self._convert_passthrough(source, method, item, entry=entry, why="")
            return
        self._resume_add("expanded", item.name)
        self._save_changes()

    def _expand(
        self, source: Source, rec: JobRecord, item: SourceItem, entry: str | None, *, archive: bool
    ) -> None:
        """Fetch ``item`` locally, extract (or decompress) it in the scratch folder, then publish each
        file as a chunk (or convert it)."""
        with self._local_copy(source, item) as (local, downloaded):
            if downloaded is None:
                self.control.add_bytes(item.size or 0)
            # One folder per item: manifest entries expand at once (a count of the items expanded so far
            # gave two entries one folder, and each removed the other's files while it unpacked them).
            label = hashlib.sha256(item.name.encode()).hexdigest()[:16]
            scratch = scratch_dir(self.dest.workdir, self.job_id) / f"expand-{label}"
            fs = self.dest.files
            fs.remove_tree(scratch)  # what an interrupted attempt left
            limit = self.host.max_unpacked_bytes
            if archive:
                base = check_output_name(archive_stem(item.name))
                self._same_archive(item, base, None)
                files = unpack(
                    local, scratch, max_bytes=limit, max_ratio=MAX_RATIO, control=self.control, root=fs.root
                )
            else:
                parent = PurePosixPath(item.name).parent.as_posix()
                base = "" if parent == "." else check_output_name(parent)  # "." was refused: a top-level file
                name = decompressed_name(PurePosixPath(item.name).name)
                self._same_archive(item, base, name)
                files = [
                    decompress(
                        local,
                        scratch / name,
                        max_bytes=limit,
                        max_ratio=MAX_RATIO,
                        control=self.control,
                        root=fs.root,
                    )
                ]
            self._log(
                "info", f"{item.name}: {'unpacked' if archive else 'decompressed'} {len(files)} file(s)"
            )
            rels = [check_output_name(f.name if base in ("", ".") else f"{base}/{f.name}") for f in files]
            recorded = self._recorded_outputs(rels, base if archive else None)
            for extracted, rel in zip(files, rels, strict=True):
                chunk = recorded.get(rel)
                if chunk is None or chunk.state == ChunkState.pending.value:  # else staged by an earlier run
                    self._publish_extracted(rec, scratch / extracted.name, rel, extracted, entry, chunk)
            fs.remove_tree(scratch)
            if downloaded is not None:
                fs.unlink(downloaded)

    def _recorded_outputs(self, rels: list[str], folder: str | None) -> dict[str, JobChunk]:
        """``{output: its chunk}`` of the outputs ``rels`` an earlier run of the job recorded (none on a
        first run: nothing but this archive expands into its place). ``folder``: the one they all lie in (an
        archive's), read by prefix; else each read by path. O(their chunks), not the job's every chunk once
        per archive (a folder of thousands of compressed files)."""
        if not self.recovering:
            return {}
        if folder:
            return dict(self._chunks_under(folder))
        return {rel: c for rel in rels for c in self._chunks_named(rel)}

    def _same_archive(self, item: SourceItem, base: str, decompressed: str | None) -> None:
        """Claim what archive (or compressed file) ``item`` is expanded into, and record which version of
        it the job takes its files from (``item.validator``, checked by :meth:`_local_copy` just before);
        ``base``: the folder its files go to, ``decompressed``: the one file's name for a compressed file.

        Raises :class:`DestinationExists` when that folder (or file) is another archive's (``bulk.tar`` and
        ``bulk.zip``), or is or holds an item the job lists (``t.csv`` beside ``t.csv.gz``, ``bulk/lc.csv``
        beside ``bulk.tar``): their files and tables would have been taken for each other's (a table
        converted on after the other's parts, a file skipped as staged already). A resumed run that finds
        another version after files of the first were staged raises :class:`SourceChanged`, having removed
        the Parquet parts of tables converted from it: a table never holds rows of two versions (before,
        the run converted on from the new version after the old version's parts). The claim and the first
        version are saved at once: one write of the resume data per archive."""
        scope = "" if base in ("", ".") else f"{base}/"
        out = base if decompressed is None else f"{scope}{decompressed}"
        with self._lock:
            claimed = self._claim_expansion(item, out, unpacked=decompressed is None)
            seen = self.resume.get(TABLE_VERSIONS, {}).get(item.name)
        if seen is not None and seen != item.validator:
            with self._lock:
                made_by = dict(self.resume.get("outputs", {}))
            self._archive_changed(item, scope, None if decompressed is None else out, made_by)
        if claimed or seen != item.validator:
            self._resume_put(TABLE_VERSIONS, item.name, dict(item.validator))
            self._save_changes()

    def _claim_expansion(self, item: SourceItem, out: str, *, unpacked: bool) -> bool:
        """Claim ``out`` (a folder unpacked into, or a decompressed file) for ``item``; True when the claim
        is new. Raises :class:`DestinationExists` when another archive claimed it or a listed item is or
        lies in it. Called holding ``_lock``."""
        if EXPANDED_INTO not in self.resume:  # a job started by an earlier version: what it expanded
            unpacks = bool((self.resume.get("request") or {}).get("unpack"))
            self.resume[EXPANDED_INTO] = {
                _expanded_into(name, unpacks): name for name in self.resume.get("expanded", [])
            }
            self._resume_dirty = True  # written whole, once
        claims = self.resume[EXPANDED_INTO]
        listed = self._listed_paths.get(out)
        other = listed if listed is not None else claims.get(out, item.name)
        if other != item.name:
            raise DestinationExists(
                f"{item.name} would be {'unpacked' if unpacked else 'decompressed'} into {out}, where this "
                f"job also stages {other}; {item.name} was not staged. Stage them in separate jobs, or as "
                "entries of a manifest (each entry has a folder of its own)"
            )
        if out in claims:
            return False
        self._resume_put(EXPANDED_INTO, out, item.name)
        return True

    def _archive_changed(
        self, item: SourceItem, scope: str, one: str | None, made_by: dict[str, str]
    ) -> None:
        """``item`` changed since its files were first taken: raise :class:`SourceChanged` when files of the
        version before were staged (``one``: the decompressed file, whose table ``made_by`` may name; else
        every file below ``scope``), after removing the Parquet parts of tables converted from them."""
        relative = self.dest.relative

        def from_it(rel: str) -> bool:  # the one file, or the table converted from it; all files unpacked
            return rel == one or made_by.get(rel) == one if one is not None else rel.startswith(scope)

        chunks = self.store.list_chunks(self.job_id)
        staged = [rel for c in chunks if c.state in DONE_STATES and from_it(rel := relative(c.path))]
        if not staged:
            return
        tables = sorted({made_by[rel] for rel in staged if rel in made_by})
        changed = SourceChanged(
            f"{item.name} changed while the job was paused or stopped, after {len(staged)} file(s) were "
            "staged from the version before"
            + ("; the Parquet parts converted from it are removed" if tables else "")
            + ". Stage it again to take it as it is now"
        )
        for table in tables:
            self._withdraw_parts(table, changed, time.time_ns())
        raise changed

    def _publish_extracted(
        self,
        rec: JobRecord,
        path: Path,
        rel: str,
        extracted: Extracted,
        entry: str | None,
        pending: JobChunk | None = None,
    ) -> None:
        """One extracted file (not staged by an earlier run): converted to Parquet parts when the job
        converts and it is a table, else published under ``rel`` as a chunk with the sha256 computed while
        extracting. ``pending``: its chunk, recorded by an earlier run that stopped before the chunk was
        ready (an upload to object storage paused; before, the file was skipped for good, and the job
        succeeded without it). The file is tagged as the job's before it takes its name (its owner
        attribute, :mod:`jupyter_staging.safety.ownership`: the job, the name and the sha256), so a
        recovering run takes the file an earlier run published under ``rel`` and stopped before recording
        (killed between the two) as it is (:meth:`_published_before_the_stop`); anything else there,
        whatever it holds, is the user's: ``rel`` is published again, which fails ``destination_exists``
        (never replaced)."""
        opts = rec.convert or {}
        fmt = detect_format(path) if rec.convert is not None else None
        if fmt is not None and fmt != "parquet" and (opts.get("hdu") is not None or is_table(path)):
            self._convert_file(path, rel, opts, entry)
            return
        self._outside_table_folders(rel)
        final = self.dest.workdir / rel
        if self.recovering and self._published_before_the_stop(
            final, size=extracted.size, sha256=extracted.sha256
        ):
            self._count_recovered()
        else:
            self._publish_tagged(path, final, extracted.sha256)
        chunk = pending or self._new_chunk(
            path=rel, state=ChunkState.pending.value, bytes=extracted.size, entry=entry
        )
        stored = self.dest.put(
            final, rel, size=extracted.size, sha256=extracted.sha256, content_type=None, control=self.control
        )
        self._chunk_ready(chunk, bytes=extracted.size, sha256=extracted.sha256, path=stored)


def _expanded_into(name: str, unpacks: bool) -> str:
    """Where item ``name`` was expanded (as :meth:`ExpandingStager._stage_item` chooses): the folder an
    archive is unpacked into, else the file a compressed file is decompressed into."""
    if unpacks and archive_kind(name):
        return archive_stem(name)
    path = PurePosixPath(name)
    decompressed = decompressed_name(path.name)
    return decompressed if path.parent.as_posix() == "." else f"{path.parent.as_posix()}/{decompressed}"
