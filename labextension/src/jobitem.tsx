/**
 * One job in the Staging sidebar, as one dense row like JupyterLab's Running and File Browser panels:
 * state icon, the name (middle ellipsis; its tooltip holds source → destination), a thin progress bar
 * while the job is unfinished, one line of figures (or of the error), and the actions, shown while the row
 * is hovered or focused; a job on a distributed executor adds a line saying where its tasks run.
 */
import {
  closeIcon,
  infoIcon,
  linkIcon,
  listIcon,
  pauseIcon,
  runIcon,
  stopIcon,
  tableRowsIcon,
  type LabIcon
} from '@jupyterlab/ui-components';
import * as React from 'react';

import { StateIcon } from './icons';
import {
  actionsFor,
  chunkCount,
  firstLine,
  isFinal,
  jobNotices,
  progressFraction,
  progressSummary,
  splitForMiddleEllipsis,
  tasksSummary,
  taskWorkerLines,
  upToDateText,
  visibleText,
  type Job
} from './model';

/** Show a destination relative to the server root ('' is the root). */
export function displayFolder(path: string): string {
  return path ? `${path}/` : '/ (server root)';
}

/** A job's tooltip: its name, then where its data comes from and goes. */
export function routeTooltip(job: Pick<Job, 'name' | 'source' | 'destination'>): string {
  return visibleText(`${job.name}\n${job.source} → ${displayFolder(job.destination)}`);
}

/** A thin bar; ``aria-valuenow`` is the percentage shown (0 to 100, never more). */
export function ProgressBar(props: { job: Job }): JSX.Element {
  const fraction = progressFraction(props.job);
  const indeterminate = fraction === null && props.job.state === 'running';
  const percent = fraction === null ? 0 : Math.round(Math.min(1, fraction) * 1000) / 10;
  return (
    <div
      className={
        `jp-Staging-bar jp-Staging-bar-${props.job.state}` + (indeterminate ? ' jp-mod-indeterminate' : '')
      }
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

/** A name that keeps its end in sight when cut: ``survey_light…curve_003``. */
export function MiddleEllipsis(props: { text: string }): JSX.Element {
  const [head, tail] = splitForMiddleEllipsis(props.text);
  return (
    <>
      <span className="jp-Staging-nameHead">{head}</span>
      {tail && <span className="jp-Staging-nameTail">{tail}</span>}
    </>
  );
}

function IconButton(props: {
  label: string;
  title: string;
  icon: LabIcon;
  onClick: () => void;
  disabled?: boolean;
  className?: string;
}): JSX.Element {
  return (
    <button
      className={`jp-Staging-iconButton ${props.className ?? ''}`}
      aria-label={props.label}
      title={props.title}
      disabled={props.disabled}
      onClick={event => {
        event.stopPropagation();
        props.onClick();
      }}
    >
      <props.icon.react tag="span" elementSize="small" />
    </button>
  );
}

export interface JobItemProps {
  job: Job;
  busy: boolean;
  /** The Parquet datasets the job produced (``undefined`` while unknown): the DataFrame action's cue. */
  parquet: readonly string[] | undefined;
  onOpen: (job: Job) => void;
  onPause: (job: Job) => void;
  onResume: (job: Job) => void;
  onCancel: (job: Job) => void;
  onRemove: (job: Job) => void;
  onDataFrame: (job: Job) => void;
  /** Copy a shareable link that opens the form prefilled to stage the same source again. */
  onCopyLink: (job: Job) => void;
}

/**
 * Where a running job's tasks are (distributed executors only): ``4 tasks on 2 workers · 3 queued``, the
 * tooltip listing each worker's running tasks; nothing for a job on the server's own threads.
 */
export function TasksLine(props: { job: Job; done?: boolean }): JSX.Element | null {
  const { job } = props;
  const text = tasksSummary(job, props.done);
  if (!text) {
    return null;
  }
  const workers = taskWorkerLines(job.progress.tasks);
  return (
    <div className="jp-Staging-numbers jp-Staging-tasksLine" title={[text, ...workers].join('\n')}>
      <span className="jp-Staging-tasks">{text}</span>
    </div>
  );
}

/** The second line of a row: the error's first line, the up-to-date note, or the figures. */
function RowDetail(props: { job: Job }): JSX.Element {
  const { job } = props;
  if (job.error) {
    return (
      // Not role="alert": a list of 200 failed jobs would be 200 alerts read out as the list appears (a
      // job started here that fails is announced by its notification; the job view's error is an alert).
      <div className="jp-Staging-error jp-Staging-errorLine" title={visibleText(job.error.message)}>
        <span className="jp-Staging-errorCode">{job.error.code}</span>
        <span className="jp-Staging-errorMessage">{visibleText(firstLine(job.error.message))}</span>
      </div>
    );
  }
  const notices = jobNotices(job).map(visibleText);
  const summary = job.up_to_date && job.state === 'succeeded' ? upToDateText(job) : progressSummary(job);
  // While a job of one chunk runs, "0/1 chunks" says nothing the bar does not: room for rate and time.
  const p = job.progress;
  const chunks = isFinal(job.state) || (p.chunks_total ?? 2) > 1 || p.chunks_done > 0 ? chunkCount(p) : '';
  return (
    <>
      <div className="jp-Staging-numbers">
        <span className="jp-Staging-summary" title={summary}>
          {summary}
        </span>
        {chunks && <span className="jp-Staging-chunkCount">{chunks}</span>}
      </div>
      <TasksLine job={job} />
      {notices.length > 0 && (
        <div className="jp-Staging-noticeLine" role="note" title={notices.join('\n')}>
          <infoIcon.react tag="span" elementSize="small" className="jp-Staging-noticeIcon" />
          <span className="jp-Staging-noticeText">{notices.join('; ')}</span>
        </div>
      )}
    </>
  );
}

/** The right end of a row's first line: percent done while unfinished, else the state when not a success. */
function rowMeta(job: Job): string {
  const fraction = progressFraction(job);
  if ((job.state === 'running' || job.state === 'paused') && fraction !== null) {
    return `${Math.floor(Math.min(1, fraction) * 100)}%`;
  }
  return job.state === 'succeeded' || job.state === 'running' ? '' : job.state;
}

/**
 * A row's actions, for its state: pause or resume, cancel, DataFrame (Parquet output only), copy link,
 * log, remove.
 */
function RowActions(props: JobItemProps): JSX.Element {
  const { job, busy } = props;
  const actions = actionsFor(job.state);
  const removeTitle = isFinal(job.state)
    ? 'Remove from this list (the staged files stay)'
    : 'Cancel the job and remove it from this list';
  return (
    <span className="jp-Staging-actions">
      {actions.pause && (
        <IconButton
          label="Pause"
          title="Pause"
          icon={pauseIcon}
          disabled={busy}
          onClick={() => props.onPause(job)}
        />
      )}
      {actions.resume && (
        <IconButton
          label="Resume"
          title="Resume"
          icon={runIcon}
          disabled={busy}
          onClick={() => props.onResume(job)}
        />
      )}
      {actions.cancel && (
        <IconButton
          label="Cancel"
          title="Cancel the job (its partial output is cleaned up)"
          icon={stopIcon}
          className="jp-mod-warn"
          disabled={busy}
          onClick={() => props.onCancel(job)}
        />
      )}
      {!!props.parquet?.length && (
        <IconButton
          label="DataFrame"
          title="Insert a cell reading this Parquet dataset into the active notebook"
          icon={tableRowsIcon}
          onClick={() => props.onDataFrame(job)}
        />
      )}
      <IconButton
        label="Copy link"
        title="Copy a link that opens this form prefilled to stage the same source (nothing starts until Stage)"
        icon={linkIcon}
        className="jp-Staging-copyLink"
        onClick={() => props.onCopyLink(job)}
      />
      <IconButton
        label="Log"
        title="Open the job: chunks and log"
        icon={listIcon}
        onClick={() => props.onOpen(job)}
      />
      <IconButton
        label="Remove"
        title={removeTitle}
        icon={closeIcon}
        disabled={busy}
        onClick={() => props.onRemove(job)}
      />
    </span>
  );
}

/** One job of the list: one dense row (see the module). */
export function JobItem(props: JobItemProps): JSX.Element {
  const { job } = props;
  return (
    <li
      className={`jp-Staging-job jp-Staging-job-${job.state}`}
      data-job-id={job.id}
      data-state={job.state}
      title={routeTooltip(job)}
    >
      <div className="jp-Staging-jobHead">
        <StateIcon state={job.state} />
        <button className="jp-Staging-jobName" aria-label={visibleText(job.name)}
          onClick={() => props.onOpen(job)}
        >
          <MiddleEllipsis text={visibleText(job.name)} />
        </button>
        <span className="jp-Staging-meta">{rowMeta(job)}</span>
        <RowActions {...props} />
      </div>
      {!isFinal(job.state) && <ProgressBar job={job} />}
      <RowDetail job={job} />
    </li>
  );
}
