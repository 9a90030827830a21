"""``Job.to_table()``: the staged Parquet as an astropy ``QTable`` with units and times (issue 13)."""

from __future__ import annotations

import shutil

import astropy.units as u
from astropy.time import Time

from jupyter_staging.kernel import api
from tests.helpers.data import KEPLER


def test_to_table_gives_units_and_times_for_the_kepler_light_curve(local_backend, tmp_path):
    shutil.copyfile(KEPLER, tmp_path / KEPLER.name)
    job = api.stage(str(tmp_path / KEPLER.name), "kepler", to_parquet=True, chunk_rows=5000, wait=True)

    table = job.to_table()

    assert len(table) == 14280
    assert table["PDCSAP_FLUX"].unit == u.electron / u.s
    assert isinstance(table["TIME"], Time) and table["TIME"].scale == "tdb"
    assert table["TIME"][0].jd > 2454833
