"""VOTable and ECSV files a user may hold that are damaged: what the job and the converter say of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from jupyter_staging.formats.detect import table_problem

SPITZER = Path("/work/shared/data/spitzer_example_catalog.xml")

pytestmark = pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyWarning")


def test_a_votable_cut_short_is_named_as_damaged_not_as_no_table(local_backend, tmp_path: Path) -> None:
    from jupyter_staging.errors import StagingError
    from jupyter_staging.kernel import api

    src = tmp_path / "spitzer.xml"  # a download that stopped half-way through the TABLEDATA
    src.write_bytes(SPITZER.read_bytes()[:60_000])

    job = api.stage(str(src), "cut", to_parquet=True, wait=True)

    assert job.notices == [
        "spitzer.xml: not a readable VOTable file (2056:1: no element found): staged as it is"
    ]
    with pytest.raises(StagingError) as refused:
        job.to_table()
    assert refused.value.code == "no_parquet_output"
    assert not list((tmp_path / "cut").rglob("*.parquet")) if (tmp_path / "cut").exists() else True


def test_a_votable_without_a_table_is_still_not_a_table(tmp_path: Path) -> None:
    src = tmp_path / "empty.xml"
    src.write_text('<?xml version="1.0"?><VOTABLE version="1.4"><RESOURCE/></VOTABLE>')
    assert table_problem(src) == "not a table"
    assert table_problem(SPITZER) is None
