/** React pieces of the panel: the "New staging job" form and a job's chunk table. */
import * as React from 'react';

import { StagingAPIError } from './api';
import { buildCreateRequest, type JobFormValues } from './form';
import {
  COMPRESSIONS,
  IF_EXISTS,
  METHODS,
  defaultDestination,
  formatBytes,
  failureText,
  formatCount,
  visibleText,
  type Chunk,
  type Compression,
  type CreateJobRequest,
  type IfExists,
  type Method
} from './model';

/** How the form words each ``if_exists`` choice. */
const IF_EXISTS_LABELS: Record<IfExists, string> = {
  reuse: 'reuse it if unchanged',
  refresh: 'stage it again',
  error: 'stop with an error'
};

export interface JobFormProps {
  initial: JobFormValues;
  onSubmit: (request: CreateJobRequest) => Promise<void>;
  onCancel: () => void;
}

/**
 * "New staging job": source, destination, name, method, what to do when the folder already holds this
 * data, an expected checksum, and the Parquet conversion options.
 */
export function JobForm(props: JobFormProps): JSX.Element {
  const [values, setValues] = React.useState<JobFormValues>(props.initial);
  const [error, setError] = React.useState<{ message: string; code?: string } | null>(null);
  const [submitting, setSubmitting] = React.useState(false);
  // An edit makes the last refusal stale: it goes as soon as the user changes anything.
  const set = <K extends keyof JobFormValues>(key: K, value: JobFormValues[K]) => {
    setValues(v => ({ ...v, [key]: value }));
    setError(null);
  };
  const defaultFolder = defaultDestination(values.name.trim() || values.source || 'name');

  const submit = async (event: React.FormEvent) => {
    event.preventDefault();
    const built = buildCreateRequest(values);
    if ('error' in built) {
      setError({ message: built.error });
      return;
    }
    setSubmitting(true);
    setError(null);
    try {
      await props.onSubmit(built.request);
    } catch (err) {
      const e = err as StagingAPIError;
      setError({ message: failureText(e), code: e instanceof StagingAPIError ? e.code : undefined });
    } finally {
      setSubmitting(false);
    }
  };

  return (
    <form className="jp-Staging-form" onSubmit={submit} aria-label="New staging job">
      <div className="jp-Staging-formTitle">New staging job</div>
      <label className="jp-Staging-field">
        <span>Source</span>
        <input
          className="jp-mod-styled"
          name="source"
          autoFocus
          placeholder="/archive/… , https://… or s3://bucket/key"
          value={values.source}
          onChange={e => set('source', e.target.value)}
        />
      </label>
      <label className="jp-Staging-field">
        <span>Destination folder</span>
        <input
          className="jp-mod-styled"
          name="destination"
          placeholder={defaultFolder}
          value={values.destination}
          onChange={e => set('destination', e.target.value)}
        />
        <small>relative to the server's root; empty: the folder shown, where a re-run finds it</small>
      </label>
      <label className="jp-Staging-field">
        <span>Name</span>
        <input
          className="jp-mod-styled"
          name="name"
          placeholder="(from the source)"
          value={values.name}
          onChange={e => set('name', e.target.value)}
        />
      </label>
      <label className="jp-Staging-field">
        <span>Method</span>
        <select
          className="jp-mod-styled"
          name="method"
          value={values.method}
          onChange={e => set('method', e.target.value as Method | '')}
        >
          <option value="">automatic</option>
          {METHODS.map(m => (
            <option key={m} value={m}>
              {m}
            </option>
          ))}
        </select>
      </label>
      <label className="jp-Staging-field">
        <span>If the folder already holds this data</span>
        <select
          className="jp-mod-styled"
          name="ifExists"
          value={values.ifExists ?? 'reuse'}
          onChange={e => set('ifExists', e.target.value as IfExists)}
        >
          {IF_EXISTS.map(choice => (
            <option key={choice} value={choice}>
              {IF_EXISTS_LABELS[choice]}
            </option>
          ))}
        </select>
      </label>
      <label className="jp-Staging-field">
        <span>Checksum</span>
        <input
          className="jp-mod-styled"
          name="checksum"
          placeholder="(optional) sha256:… or md5:…"
          spellCheck={false}
          value={values.checksum ?? ''}
          onChange={e => set('checksum', e.target.value)}
        />
        <small>the bytes the source must have; a mismatch fails the job</small>
      </label>
      <label className="jp-Staging-check">
        <input
          type="checkbox"
          name="toParquet"
          checked={values.toParquet}
          onChange={e => set('toParquet', e.target.checked)}
        />
        <span>Convert tables to Parquet</span>
      </label>
      {values.toParquet && (
        <div className="jp-Staging-parquet">
          <label className="jp-Staging-field">
            <span>Rows per chunk</span>
            <input
              className="jp-mod-styled"
              name="chunkRows"
              type="number"
              min={1}
              step={1}
              value={values.chunkRows}
              onChange={e => set('chunkRows', e.target.value)}
            />
          </label>
          <label className="jp-Staging-field">
            <span>Compression</span>
            <select
              className="jp-mod-styled"
              name="compression"
              value={values.compression}
              onChange={e => set('compression', e.target.value as Compression)}
            >
              {COMPRESSIONS.map(c => (
                <option key={c} value={c}>
                  {c}
                </option>
              ))}
            </select>
          </label>
          <label className="jp-Staging-field">
            <span>FITS HDU</span>
            <input
              className="jp-mod-styled"
              name="hdu"
              placeholder="first table"
              title="The FITS extension holding the table: an index (1) or a name (LIGHTCURVE)"
              spellCheck={false}
              value={values.hdu ?? ''}
              onChange={e => set('hdu', e.target.value)}
            />
          </label>
          <label className="jp-Staging-field">
            <span>CSV encoding</span>
            <input
              className="jp-mod-styled"
              name="encoding"
              placeholder="UTF-8"
              title="The text encoding of a CSV or TSV file that is not UTF-8: latin-1, cp1252"
              spellCheck={false}
              value={values.encoding ?? ''}
              onChange={e => set('encoding', e.target.value)}
            />
          </label>
        </div>
      )}
      {error && (
        <div className="jp-Staging-error jp-Staging-formError" role="alert">
          {error.code && <span className="jp-Staging-errorCode">{error.code}</span>}
          <span className="jp-Staging-errorMessage">{visibleText(error.message)}</span>
        </div>
      )}
      <div className="jp-Staging-formButtons">
        <button type="button" className="jp-Staging-button" onClick={props.onCancel}>
          Cancel
        </button>
        <button type="submit" className="jp-Staging-button jp-mod-accept" disabled={submitting}>
          {submitting ? 'Submitting…' : 'Stage'}
        </button>
      </div>
    </form>
  );
}

/**
 * The most chunk rows a job view shows: the first ones, in index order, and a line saying how many more
 * there are (a table of all 20,000 chunks of a job took 8 s to appear, with the page frozen meanwhile).
 */
export const MAX_CHUNK_ROWS = 500;

/**
 * A table of a job's chunks: the first :data:`MAX_CHUNK_ROWS` of them, and a note when the job has more
 * (``total``, default the chunks given).
 */
export function ChunkTable(props: { chunks: readonly Chunk[]; total?: number }): JSX.Element {
  if (!props.chunks.length) {
    return <div className="jp-Staging-empty">No chunks yet.</div>;
  }
  const shown = props.chunks.length > MAX_CHUNK_ROWS ? props.chunks.slice(0, MAX_CHUNK_ROWS) : props.chunks;
  const total = Math.max(props.total ?? 0, props.chunks.length);
  return (
    <>
      <ChunkRows chunks={shown} />
      {shown.length < total && (
        <div className="jp-Staging-chunksMore" role="note">
          Showing the first {formatCount(shown.length)} of {formatCount(total)} chunks; the job's folder
          holds them all.
        </div>
      )}
    </>
  );
}

function ChunkRows(props: { chunks: readonly Chunk[] }): JSX.Element {
  return (
    <table className="jp-Staging-chunks">
      <thead>
        <tr>
          <th>#</th>
          <th>path</th>
          <th>state</th>
          <th className="jp-mod-number">rows</th>
          <th className="jp-mod-number">bytes</th>
        </tr>
      </thead>
      <tbody>
        {props.chunks.map(c => (
          <tr key={c.id} className={`jp-Staging-chunk-${c.state}`}>
            <td>{c.index}</td>
            <td className="jp-Staging-chunkPath" title={c.sha256 ? `sha256 ${c.sha256}` : undefined}>
              {visibleText(c.path)}
            </td>
            <td>{c.state}</td>
            <td className="jp-mod-number">{c.rows === null ? '' : formatCount(c.rows)}</td>
            <td className="jp-mod-number">{c.bytes === null ? '' : formatBytes(c.bytes)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
