"""Write demo/staging-demo.ipynb: %stage the shipped Kepler light curve and Spitzer VOTable into
DataFrames.

Usage: ``python scripts/make_demo_notebook.py DEMO_FOLDER [DATA_FOLDER]``. Without a data folder (on Binder,
where ``../shared/data`` does not exist) the notebook stages the same files from their public copies on
the astropy data server (https://www.astropy.org/astropy-data/, the collection ``../shared/data`` was
taken from), as HTTPS downloads.
"""

import sys
from pathlib import Path

import nbformat

root, data = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else ""
target = root / "staging-demo.ipynb"
if target.exists():
    sys.exit(0)
#: Public HTTPS copies of the sample files (the astropy data server's mirror).
PUBLIC = "https://www.astropy.org/astropy-data"
if data:
    kepler = f"{data}/kplr010666592-2009131110544_slc.fits"
    spitzer = f"{data}/spitzer_example_catalog.xml"
else:
    kepler = f"{PUBLIC}/timeseries/kplr010666592-2009131110544_slc.fits"
    spitzer = f"{PUBLIC}/photometry/spitzer_example_catalog.xml"
cells = [
    nbformat.v4.new_markdown_cell(
        "# jupyter_staging demo\n\nStage real mission data into this folder as chunked Parquet, "
        "then read it with pandas. Jobs run in the Jupyter server, so they survive kernel restarts."
    ),
    nbformat.v4.new_code_cell("%load_ext jupyter_staging"),
    nbformat.v4.new_code_cell(f"job = %stage {kepler} --to-parquet --chunk-rows 5000 --wait\njob"),
    nbformat.v4.new_code_cell(
        "df = job.to_pandas()\nprint(len(df), 'rows')\ndf[['TIME', 'PDCSAP_FLUX']].head()"
    ),
    nbformat.v4.new_code_cell("job.to_arrow().schema.field('PDCSAP_FLUX').metadata"),
    nbformat.v4.new_code_cell(
        "table = job.to_table()  # an astropy QTable: units as Quantity, TIME as Time\n"
        "table['PDCSAP_FLUX'].unit, table['TIME'][0].iso"
    ),
    nbformat.v4.new_code_cell(f"votable = %stage {spitzer} --to-parquet --wait\nvotable.to_pandas().head()"),
    nbformat.v4.new_code_cell("%stage jobs"),
]
nb = nbformat.v4.new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbformat.write(nb, target)
