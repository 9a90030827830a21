"""VOTable and ECSV files a user may hold that are damaged: what the job and the converter say of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from jupyter_staging.errors import ConversionFailed
from jupyter_staging.formats.convert import convert_to_parquet
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


def test_an_ecsv_header_that_is_not_yaml_says_what_yaml_found(tmp_path: Path) -> None:
    src = tmp_path / "bad.ecsv"
    src.write_text("# %ECSV 1.0\n# ---\n# datatype: [\na\n1\n")
    with pytest.raises(ConversionFailed) as caught:
        convert_to_parquet(src, tmp_path / "out")
    assert caught.value.message == (
        "bad.ecsv: invalid ECSV header: while parsing a flow node: expected the node content, but found "
        "'<stream end>' (line 3)"
    )
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_an_ecsv_header_without_datatype_says_so(tmp_path: Path) -> None:
    src = tmp_path / "nodatatype.ecsv"
    src.write_text("# %ECSV 1.0\n# ---\n# delimiter: ','\na,b\n1,2\n")
    with pytest.raises(ConversionFailed) as caught:
        convert_to_parquet(src, tmp_path / "out")
    message = caught.value.message
    assert message == "nodatatype.ecsv: invalid ECSV header: it has no 'datatype' list of columns"
