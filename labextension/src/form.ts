/** The "New staging job" form's values and the ``POST /jobs`` body built from them (pure, unit-tested). */
import type { Compression, CreateJobRequest, IfExists, Method } from './model';

/** An expected checksum as the server takes it: ``sha256:<64 hex>`` or ``md5:<32 hex>``. */
export const CHECKSUM_PATTERN = /^(sha256:[0-9a-f]{64}|md5:[0-9a-f]{32})$/i;

/** The form's fields as the user typed them. */
export interface JobFormValues {
  source: string;
  destination: string;
  name: string;
  method: Method | '';
  toParquet: boolean;
  chunkRows: string | number;
  compression: Compression;
  /** "If the folder already holds this data" (default ``reuse``). */
  ifExists?: IfExists;
  /** The bytes the source must have, ``sha256:<hex>`` or ``md5:<hex>`` (optional). */
  checksum?: string;
  /** The FITS HDU holding the table, an index (``1``) or a name (``LIGHTCURVE``); empty: the first table. */
  hdu?: string;
  /** The text encoding of a CSV/TSV source that is not UTF-8 (``latin-1``, ``cp1252``); empty: UTF-8. */
  encoding?: string;
}

/** An HDU as the form's field gives it: a whole number is an index, other text an extension name. */
export function parseHdu(text: string | undefined): number | string | null {
  const value = (text ?? '').trim();
  if (!value) {
    return null;
  }
  return /^\d+$/.test(value) ? Number(value) : value;
}

/**
 * A ``POST /jobs`` body from the form's fields, or an error message for the user. Empty optional fields
 * are left out (``if_exists`` too while it is the server's default, ``reuse``); an empty destination is
 * left out too, so the server stages into its stable default folder ``staging/<name>`` (as ``%stage``
 * does), and a re-run finds its output there.
 */
export function buildCreateRequest(
  values: JobFormValues
): { request: CreateJobRequest } | { error: string } {
  const source = values.source.trim();
  if (!source) {
    return { error: 'Enter a source: a path on the server, an http(s):// URL or an s3:// URI.' };
  }
  const request: CreateJobRequest = { source };
  const destination = values.destination.trim();
  if (destination) {
    request.destination = destination;
  }
  if (values.name.trim()) {
    request.name = values.name.trim();
  }
  if (values.method) {
    request.method = values.method;
  }
  if (values.ifExists && values.ifExists !== 'reuse') {
    request.if_exists = values.ifExists;
  }
  const checksum = (values.checksum ?? '').trim();
  if (checksum) {
    if (!CHECKSUM_PATTERN.test(checksum)) {
      return { error: 'A checksum is sha256:<64 hex digits> or md5:<32 hex digits>.' };
    }
    request.checksum = checksum.toLowerCase();
  }
  if (values.toParquet) {
    const rows = Number(values.chunkRows);
    if (!Number.isInteger(rows) || rows < 1) {
      return { error: 'Rows per chunk must be a whole number of at least 1.' };
    }
    request.convert = { format: 'parquet', chunk_rows: rows, compression: values.compression };
    const hdu = parseHdu(values.hdu);
    if (hdu !== null) {
      request.convert.hdu = hdu;
    }
    const encoding = (values.encoding ?? '').trim();
    if (encoding) {
      request.convert.encoding = encoding;
    }
  }
  return { request };
}
