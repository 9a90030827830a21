/** React pieces of the panel: a job's row, its progress bar, and the "New staging job" form. */
import { closeIcon } from '@jupyterlab/ui-components';
import * as React from 'react';

import { StagingAPIError } from './api';
import { buildCreateRequest, type JobFormValues } from './form';
import { StateIcon } from './icons';
import {
  COMPRESSIONS,
  IF_EXISTS,
  METHODS,
  actionsFor,
  formatBytes,
  formatCount,
  isFinal,
  progressFraction,
  progressSummary,
  shortSource,
  upToDateText,
  type Compression,
  type CreateJobRequest,
  type IfExists,
  type Job,
  type Method
} from './model';

/** How the form words each ``if_exists`` choice. */
const IF_EXISTS_LABELS: Record<IfExists, string> = {
  reuse: 'reuse it if unchanged',
  refresh: 'stage it again',
  error: 'stop with an error'
};

/** Show a destination relative to the server root ('' is the root). */
export function displayFolder(path: string): string {
  return path ? `${path}/` : '/ (server root)';
}

export function ProgressBar(props: { job: Job }): JSX.Element {
  const fraction = progressFraction(props.job);
  const indeterminate = fraction === null && props.job.state === 'running';
  const percent = fraction === null ? 0 : Math.round(fraction * 1000) / 10;
  return (
    <div
      className={`jp-Staging-bar jp-Staging-bar-${props.job.state}${indeterminate ? ' jp-mod-indeterminate' : ''}`}
      role="progressbar"
      aria-valuemin={0}
      aria-valuemax={100}
      aria-valuenow={fraction === null ? undefined : percent}
      title={fraction === null ? 'size not known yet' : `${percent}%`}
    >
      <div className="jp-Staging-barFill" style={{ width: indeterminate ? '30%' : `${percent}%` }} />
    </div>
  );
}

export interface JobItemProps {
  job: Job;
  busy: boolean;
  onOpen: (job: Job) => void;
  onPause: (job: Job) => void;
  onResume: (job: Job) => void;
  onCancel: (job: Job) => void;
  onRemove: (job: Job) => void;
  onDataFrame: (job: Job) => void;
}

/** One job in the list: state icon, name, route, progress bar, numbers, error and buttons. */
export function JobItem(props: JobItemProps): JSX.Element {
  const { job } = props;
  const actions = actionsFor(job.state);
  const p = job.progress;
  const chunks =
    p.chunks_total !== null && p.chunks_total !== undefined
      ? `${p.chunks_done}/${p.chunks_total} ${job.convert ? 'parts' : 'files'}`
      : '';
  return (
    <li className={`jp-Staging-job jp-Staging-job-${job.state}`} data-job-id={job.id} data-state={job.state}>
      <div className="jp-Staging-jobHead">
        <StateIcon state={job.state} />
        <button
          className="jp-Staging-jobName"
          title={`Open ${job.name}: chunks and log`}
          onClick={() => props.onOpen(job)}
        >
          {job.name}
        </button>
        <span className={`jp-Staging-stateLabel jp-Staging-state-${job.state}`}>{job.state}</span>
        {actions.remove && (
          <button
            className="jp-Staging-remove"
            aria-label="Remove"
            disabled={props.busy}
            title={
              isFinal(job.state)
                ? 'Remove from this list (the staged files stay)'
                : 'Cancel the job and remove it from this list'
            }
            onClick={() => props.onRemove(job)}
          >
            <closeIcon.react tag="span" elementSize="small" />
          </button>
        )}
      </div>
      <div className="jp-Staging-route" title={`${job.source}\n→ ${displayFolder(job.destination)}`}>
        <span className="jp-Staging-source">{shortSource(job.source)}</span>
        <span className="jp-Staging-arrow">→</span>
        <span className="jp-Staging-destination">{displayFolder(job.destination)}</span>
      </div>
      <ProgressBar job={job} />
      <div className="jp-Staging-numbers">
        <span className="jp-Staging-summary">{progressSummary(job)}</span>
        {chunks && <span className="jp-Staging-chunkCount">{chunks}</span>}
      </div>
      {job.up_to_date && job.state === 'succeeded' && (
        <div className="jp-Staging-upToDate" role="status">
          {upToDateText(job)}
        </div>
      )}
      {job.error && (
        <div className="jp-Staging-error" role="alert">
          <span className="jp-Staging-errorCode">{job.error.code}</span>
          <span className="jp-Staging-errorMessage">{job.error.message}</span>
        </div>
      )}
      <div className="jp-Staging-actions">
        {actions.pause && (
          <button className="jp-Staging-button" disabled={props.busy} onClick={() => props.onPause(job)}>
            Pause
          </button>
        )}
        {actions.resume && (
          <button className="jp-Staging-button" disabled={props.busy} onClick={() => props.onResume(job)}>
            Resume
          </button>
        )}
        {actions.cancel && (
          <button
            className="jp-Staging-button jp-mod-warn"
            disabled={props.busy}
            onClick={() => props.onCancel(job)}
          >
            Cancel
          </button>
        )}
        <button className="jp-Staging-button" onClick={() => props.onOpen(job)}>
          Log
        </button>
        {job.state === 'succeeded' && job.convert && (
          <button
            className="jp-Staging-button jp-mod-accept"
            title="Insert a cell reading this Parquet dataset into the active notebook"
            onClick={() => props.onDataFrame(job)}
          >
            DataFrame
          </button>
        )}
      </div>
    </li>
  );
}

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
  const set = <K extends keyof JobFormValues>(key: K, value: JobFormValues[K]) =>
    setValues(v => ({ ...v, [key]: value }));

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
      setError({ message: e.message, code: e instanceof StagingAPIError ? e.code : undefined });
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
          placeholder="(server root)"
          value={values.destination}
          onChange={e => set('destination', e.target.value)}
        />
        <small>relative to the server's root; created if missing</small>
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
            <span>Rows per part file</span>
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
        </div>
      )}
      {error && (
        <div className="jp-Staging-error jp-Staging-formError" role="alert">
          {error.code && <span className="jp-Staging-errorCode">{error.code}</span>}
          <span className="jp-Staging-errorMessage">{error.message}</span>
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

/** A small table of a job's chunks. */
export function ChunkTable(props: { chunks: readonly import('./model').Chunk[] }): JSX.Element {
  if (!props.chunks.length) {
    return <div className="jp-Staging-empty">No output files yet.</div>;
  }
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
              {c.path}
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
