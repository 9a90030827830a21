/**
 * Shareable staging links: ``<base_url>lab?stage=<source>&dest=<folder>&to_parquet=1`` (with ``&hdu=`` and
 * ``&encoding=`` when a conversion names them) opens the panel's "New staging job" form prefilled, and nothing
 * starts until the user presses Stage. Under JupyterHub a
 * link goes through ``<hub_prefix>user-redirect/lab?...``, which the Hub redirects to the same URL of the
 * reader's own server. Pure functions (no JupyterLab imports), unit-tested under plain node.
 */
import type { Job } from './model';

/** The query parameters of a staging link, in the order a link spells them. */
export const LINK_PARAMS = ['stage', 'dest', 'to_parquet', 'hdu', 'encoding'] as const;

/** Longest source or destination a link may carry (characters); a longer one is not a staging link. */
export const MAX_LINK_FIELD = 4096;

/** What a link prefills: the form's source, destination and "Convert tables to Parquet" (with its FITS HDU
 * and CSV encoding when given; only with ``toParquet``). */
export interface StagingLink {
  source: string;
  destination: string;
  toParquet: boolean;
  /** The FITS HDU holding the table, as the form's field takes it: an index (``1``) or a name. */
  hdu?: string;
  /** The text encoding of a CSV/TSV that is not UTF-8 (``latin-1``). */
  encoding?: string;
}

/** Text a form field can take: trimmed, without control characters (NUL, newlines, ...). */
function cleanField(value: string | null): string | null {
  if (value === null) {
    return '';
  }
  // eslint-disable-next-line no-control-regex
  if (value.length > MAX_LINK_FIELD || /[\u0000-\u001f\u007f]/.test(value)) {
    return null;
  }
  return value.trim();
}

/** ``to_parquet`` as a link may spell it: ``1``/``true``/``yes`` (any case) are on, anything else off. */
function flag(value: string | null): boolean {
  return value !== null && /^(1|true|yes|on)$/i.test(value.trim());
}

/**
 * The staging link in a page's query string (``window.location.search``, with or without its ``?``), or
 * null when there is none: no ``stage`` parameter, an empty one, or a field longer than
 * :data:`MAX_LINK_FIELD` characters or holding control characters. The values are only prefilled into the
 * form; the server validates them (confinement, source roots, URL schemes) when the user presses Stage.
 */
export function parseStagingLink(search: string): StagingLink | null {
  const params = new URLSearchParams(search);
  const source = cleanField(params.get('stage'));
  const destination = cleanField(params.get('dest'));
  const hdu = cleanField(params.get('hdu'));
  const encoding = cleanField(params.get('encoding'));
  if (!source || destination === null || hdu === null || encoding === null) {
    return null;
  }
  const link: StagingLink = { source, destination, toParquet: flag(params.get('to_parquet')) };
  if (link.toParquet && hdu) {
    link.hdu = hdu;
  }
  if (link.toParquet && encoding) {
    link.encoding = encoding;
  }
  return link;
}

/**
 * ``href`` without the staging link's parameters (the others, such as ``reset``, stay), so a reload of
 * the page does not open the form again. ``href`` is an absolute URL; the answer is one too.
 */
export function withoutStagingLink(href: string): string {
  const url = new URL(href);
  for (const name of LINK_PARAMS) {
    url.searchParams.delete(name);
  }
  return url.toString();
}

/** Where a link points: the server's absolute base URL, or, under JupyterHub, the Hub's prefix. */
export interface LinkTarget {
  /** The server's absolute base URL, ending with ``/`` (``http://host:8888/`` or ``https://hub/user/ann/``). */
  baseUrl: string;
  /** The Hub's URL prefix (``/hub/``) when the server runs under JupyterHub, else ''. */
  hubPrefix?: string;
}

/**
 * A shareable link that opens the form prefilled with ``link``: ``<baseUrl>lab?stage=...&dest=...``
 * (``&to_parquet=1`` when converting), or under a Hub ``<origin><hubPrefix>user-redirect/lab?...``, which
 * works for every user of that Hub. An empty destination is left out (the server's default folder). The
 * link carries no token.
 */
export function buildStagingLink(link: StagingLink, target: LinkTarget): string {
  const base = new URL(target.baseUrl);
  const prefix = (target.hubPrefix ?? '').trim();
  const path = prefix ? `${prefix.replace(/\/*$/, '/')}user-redirect/lab` : `${base.pathname}lab`;
  const url = new URL(path.startsWith('/') ? path : `/${path}`, base.origin);
  url.searchParams.set('stage', link.source);
  if (link.destination) {
    url.searchParams.set('dest', link.destination);
  }
  if (link.toParquet) {
    url.searchParams.set('to_parquet', '1');
    if (link.hdu) {
      url.searchParams.set('hdu', link.hdu);
    }
    if (link.encoding) {
      url.searchParams.set('encoding', link.encoding);
    }
  }
  return url.toString();
}

/** What a link to stage ``job`` again prefills: its source, its destination, Parquet if it converted (with
 * the conversion's FITS HDU and CSV encoding when it named them). */
export function linkOfJob(job: Pick<Job, 'source' | 'destination' | 'convert'>): StagingLink {
  const link: StagingLink = {
    source: job.source,
    destination: job.destination,
    toParquet: job.convert?.format === 'parquet'
  };
  const hdu = job.convert?.hdu;
  if (link.toParquet && hdu !== null && hdu !== undefined) {
    link.hdu = String(hdu);
  }
  if (link.toParquet && job.convert?.encoding) {
    link.encoding = job.convert.encoding;
  }
  return link;
}
