"""Tabular formats: format detection, streaming readers (CSV, FITS, VOTable, ECSV, Parquet), the Parquet part
writer and Arrow metadata; :func:`jupyter_staging.formats.convert.convert_to_parquet` ties them together."""
