"""A FITS file holding images and a table, staged with ``--to-parquet``: its Parquet output holds the table
only, and the job's log says which image data was left out (HorseHead.fits of the shared data: an 891 x 893
image in its primary HDU, a 1,600-row mask table in HDU 1; a Kepler light curve: its 12 x 10 aperture image
in HDU 2). Before, the job succeeded saying nothing, and a user found no image in the folder and no word of
why. A folder of many such files gets a line for each of the first three, then one for the rest.
"""

from __future__ import annotations

import shutil

from jupyter_staging.engine.conversion import IMAGES_NOTED_MAX, ImageNotes
from jupyter_staging.engine.models import CreateJob, JobState
from jupyter_staging.formats.fits import images_left_out
from tests.helpers.data import KEPLER, SHARED_DATA

HORSEHEAD = SHARED_DATA / "HorseHead.fits"
TAIL = "is not in the output: stage the file without --to-parquet to keep it"


def staged_warnings(manager, source) -> list[str]:
    job, _ = manager.create(CreateJob(source=str(source), destination="out", convert={"format": "parquet"}))
    done = manager.wait(job.id, timeout=120)
    assert done.state == JobState.succeeded
    return [line["message"] for line in manager.job_log(job.id) if line["level"] == "warning"]


def test_the_log_names_the_image_a_conversion_leaves_out(manager, root):
    warnings = staged_warnings(manager, HORSEHEAD)
    assert (root / "out" / "HorseHead.parquet").is_dir() and not (root / "out" / "HorseHead.fits").exists()
    assert warnings == [
        f"HorseHead.fits: only its table (HDU 1 er.mask) was converted; its image data (HDU 0 PRIMARY, 891 x"
        f" 893 int16) {TAIL}"
    ]


def test_a_light_curves_aperture_image_is_named_too(manager, root):
    assert staged_warnings(manager, KEPLER) == [
        f"{KEPLER.name}: only its table (HDU 1 LIGHTCURVE) was converted; its image data (HDU 2 APERTURE,"
        f" 12 x 10 int32) {TAIL}"
    ]


def test_a_folder_of_many_names_the_first_files_then_says_there_are_more(manager, root, tmp_path):
    folder = tmp_path / "sector"
    folder.mkdir()
    for n in range(IMAGES_NOTED_MAX + 2):
        shutil.copyfile(KEPLER, folder / f"lc{n}.fits")
    warnings = staged_warnings(manager, folder)
    assert len([w for w in warnings if w.endswith(TAIL)]) == IMAGES_NOTED_MAX
    assert "more FITS files of this job had image data left out (not listed)" in warnings
    assert len(warnings) == IMAGES_NOTED_MAX + 1  # files are converted in parallel: in any order


def test_only_the_first_files_of_a_job_are_looked_at(manager, root, tmp_path, monkeypatch):
    """Looking for image data reads a file's headers again (1-2 ms for a light curve): a job looks at its
    first IMAGES_CHECKED_MAX FITS files only, so a sector of 20,000 pays for 100, not 20,000."""
    from jupyter_staging.engine import conversion

    looked: list[str] = []

    def counted(path, hdu):
        looked.append(path.name)
        return images_left_out(path, hdu)

    monkeypatch.setattr(conversion, "IMAGES_CHECKED_MAX", 2)
    monkeypatch.setattr(conversion, "images_left_out", counted)
    folder = tmp_path / "sector"
    folder.mkdir()
    for n in range(5):
        shutil.copyfile(KEPLER, folder / f"lc{n}.fits")
    warnings = staged_warnings(manager, folder)
    assert len(looked) == 2
    assert len(warnings) == 2 and all(w.endswith(TAIL) for w in warnings)


def test_image_notes_stop_looking_once_the_rest_is_said():
    notes = ImageNotes()
    for n in range(IMAGES_NOTED_MAX + 1):
        assert notes.look()
        assert notes.note() == n  # the last: "more FITS files ... (not listed)"
    assert not notes.look()


def test_a_downloaded_file_is_looked_at_before_its_download_is_removed(manager, root, range_server):
    """A FITS file from an HTTP server (or S3) is converted from its download in the job's scratch folder,
    removed once the file is recorded converted: the log said nothing of its image data, the headers being
    read after the download was gone."""
    shutil.copyfile(HORSEHEAD, range_server.root / HORSEHEAD.name)
    warnings = staged_warnings(manager, range_server.url(HORSEHEAD.name))
    assert warnings == [
        f"HorseHead.fits: only its table (HDU 1 er.mask) was converted; its image data (HDU 0 PRIMARY, 891 x"
        f" 893 int16) {TAIL}"
    ]
