/**
 * The panel's model: the wire types of the staging API, formatting, the server-sent-event parser and the
 * job-list reducer. Pure TypeScript with no JupyterLab imports, so the unit tests run it under plain node.
 */

/** Life cycle of a job (``DESIGN.md``, "Job model"). */
export type JobState =
  | 'queued'
  | 'running'
  | 'paused'
  | 'succeeded'
  | 'failed'
  | 'cancelled'
  | 'expired';

/** States a job never leaves by itself. */
export const FINAL_STATES: ReadonlySet<JobState> = new Set<JobState>([
  'succeeded',
  'failed',
  'cancelled',
  'expired'
]);

export type Method = 'copy' | 'hardlink' | 'symlink' | 'download';
export const METHODS: readonly Method[] = ['copy', 'hardlink', 'symlink', 'download'];

export type Compression = 'zstd' | 'snappy' | 'gzip' | 'lz4' | 'brotli' | 'none';
export const COMPRESSIONS: readonly Compression[] = ['zstd', 'snappy', 'gzip', 'lz4', 'brotli', 'none'];

/**
 * What ``POST /jobs`` does when the destination already holds this data: ``reuse`` unchanged output
 * (answering ``up_to_date``, the server's default), ``refresh`` (stage again) or ``error`` (refuse).
 */
export type IfExists = 'reuse' | 'refresh' | 'error';
export const IF_EXISTS: readonly IfExists[] = ['reuse', 'refresh', 'error'];

/**
 * Where a job's work runs on a distributed executor (Dask): tasks ``queued`` (waiting for a worker),
 * ``running`` and ``done`` (in this run), and ``workers``: running tasks by worker, keyed by the worker's
 * address (``tcp://127.0.0.1:40123``) or name (``worker-0``).
 */
export interface TaskCounts {
  queued: number;
  running: number;
  done: number;
  workers: Record<string, number>;
}

/**
 * Progress of a job: source bytes done / total (``bytes_done <= bytes_total``), chunks (output pieces),
 * rows, and ``output_bytes`` (bytes of Parquet written by a conversion, when the server reports it);
 * ``rate`` in bytes/s, ``eta_seconds`` in s.
 */
export interface Progress {
  bytes_done: number;
  bytes_total: number | null;
  chunks_done: number;
  chunks_total: number | null;
  rows_done: number;
  output_bytes?: number | null;
  rate?: number | null;
  eta_seconds?: number | null;
  /** Tasks of a job on a distributed executor; null (or absent) for jobs on the server's own threads. */
  tasks?: TaskCounts | null;
}

export interface ConvertOptions {
  format: 'parquet';
  chunk_rows: number;
  compression: Compression;
  hdu?: number | string | null;
  /** The text encoding of a CSV/TSV source that is not UTF-8 (``latin-1``), as its Python codec name. */
  encoding?: string | null;
}

/** A job, as every endpoint of ``api/v1/staging`` returns it. */
export interface Job {
  id: string;
  name: string;
  owner: string;
  state: JobState;
  source: string;
  /** Folder relative to the server's root_dir ('' is the root itself). */
  destination: string;
  method: Method;
  convert: ConvertOptions | null;
  progress: Progress;
  error: { code: string; message: string } | null;
  created_at: string;
  updated_at: string;
  started_at?: string | null;
  finished_at?: string | null;
  expires_at?: string | null;
  /** True on the answer to a ``POST /jobs`` that reused unchanged output: no byte moved. */
  up_to_date?: boolean;
  /** Things the user should know that are not errors, e.g. ``not a table: staged as it is``. */
  notices?: string[] | null;
  notice?: string | null;
}

/** One output file of a job; ``path`` is relative to the job's destination. */
export interface Chunk {
  id: string;
  index: number;
  path: string;
  state: 'pending' | 'ready' | 'acked' | 'expired';
  rows: number | null;
  bytes: number | null;
  sha256: string | null;
  content_type: string | null;
}

export interface LogLine {
  time: string;
  level: string;
  message: string;
}

/** Body of ``POST /jobs``. */
export interface CreateJobRequest {
  source: string;
  destination?: string;
  method?: Method;
  convert?: ConvertOptions;
  name?: string;
  if_exists?: IfExists;
  checksum?: string;
}

export interface ListJobsResponse {
  jobs: Job[];
  next_cursor: string | null;
}

export function isFinal(state: JobState): boolean {
  return FINAL_STATES.has(state);
}

// -- formatting (format.ts, re-exported here) ---------------------------------------------------------

export * from './format';

/** What the buttons of a job in a given state do (Remove cancels an unfinished job first). */
export interface JobActions {
  pause: boolean;
  resume: boolean;
  cancel: boolean;
  remove: boolean;
}

export function actionsFor(state: JobState): JobActions {
  return {
    pause: state === 'queued' || state === 'running',
    resume: state === 'paused',
    cancel: !isFinal(state),
    remove: true
  };
}

// -- server-sent events ---------------------------------------------------------------------------------

/** One event of a ``text/event-stream``. */
export interface ServerSentEvent {
  event: string;
  data: string;
  id?: string;
}

/**
 * Incremental parser of a ``text/event-stream`` (the WHATWG rules that matter here): feed it text as it
 * arrives, in pieces of any size; it returns the events completed by that piece. Comment lines (``:``),
 * ``retry`` and unknown fields are ignored; several ``data`` lines join with ``\n``.
 */
export class EventStreamParser {
  private buffer = '';
  private data: string[] = [];
  private eventType = '';
  private lastId: string | undefined = undefined;

  feed(text: string): ServerSentEvent[] {
    this.buffer += text;
    const events: ServerSentEvent[] = [];
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      if (!match) {
        break;
      }
      // A lone '\r' at the end may be the first half of '\r\n': wait for the next piece.
      if (match[0] === '\r' && match.index === this.buffer.length - 1) {
        break;
      }
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      const event = this.line(line);
      if (event) {
        events.push(event);
      }
    }
    return events;
  }

  private line(line: string): ServerSentEvent | null {
    if (line === '') {
      if (this.data.length === 0) {
        this.eventType = '';
        return null;
      }
      const event: ServerSentEvent = {
        event: this.eventType || 'message',
        data: this.data.join('\n')
      };
      if (this.lastId !== undefined) {
        event.id = this.lastId;
      }
      this.data = [];
      this.eventType = '';
      return event;
    }
    if (line.startsWith(':')) {
      return null;
    }
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) {
      value = value.slice(1);
    }
    if (field === 'data') {
      this.data.push(value);
    } else if (field === 'event') {
      this.eventType = value;
    } else if (field === 'id') {
      this.lastId = value;
    }
    return null;
  }
}

/** The job carried by one event of ``GET /events`` (``{"type": "job", "job": {...}}``), or null. */
export function jobFromEvent(event: ServerSentEvent): Job | null {
  if (event.event !== 'message') {
    return null;
  }
  let payload: unknown;
  try {
    payload = JSON.parse(event.data);
  } catch {
    return null;
  }
  if (!payload || typeof payload !== 'object') {
    return null;
  }
  const { type, job } = payload as { type?: unknown; job?: unknown };
  if (type !== 'job' || !job || typeof job !== 'object') {
    return null;
  }
  const candidate = job as Partial<Job>;
  if (typeof candidate.id !== 'string' || typeof candidate.state !== 'string' || !candidate.progress) {
    return null;
  }
  return candidate as Job;
}

// -- the job list -----------------------------------------------------------------------------------------

export interface JobsState {
  /** Every known job by id. */
  readonly jobs: Readonly<Record<string, Job>>;
  /** Ids removed from the list by the user (client-side only: the server keeps its history). */
  readonly hidden: readonly string[];
}

export type JobsAction =
  /** Jobs from ``GET /jobs`` (a poll) or from a REST answer. */
  | { type: 'jobs'; jobs: readonly Job[] }
  /** One job from the event stream. */
  | { type: 'job'; job: Job }
  /** The answer to ``POST /jobs``: authoritative for ``up_to_date``; shows the job even if it was hidden. */
  | { type: 'created'; job: Job }
  | { type: 'hide'; id: string }
  /** Hide several jobs at once ("Clear finished"). */
  | { type: 'hideMany'; ids: readonly string[] }
  | { type: 'setHidden'; ids: readonly string[] };

export const EMPTY_JOBS: JobsState = { jobs: {}, hidden: [] };

const PROGRESS_KEYS: (keyof Progress)[] = ['bytes_done', 'chunks_done', 'rows_done'];

/**
 * Whether ``incoming`` should replace ``current``: a newer ``updated_at`` wins; at the same
 * ``updated_at`` (progress does not bump it) the one that got further wins, so an older poll answer
 * never moves a progress bar backwards under a fresher event.
 */
export function isNewer(incoming: Job, current: Job | undefined): boolean {
  if (!current) {
    return true;
  }
  const a = Date.parse(incoming.updated_at);
  const b = Date.parse(current.updated_at);
  if (Number.isFinite(a) && Number.isFinite(b) && a !== b) {
    return a > b;
  }
  for (const key of PROGRESS_KEYS) {
    const x = (incoming.progress[key] as number | null | undefined) ?? 0;
    const y = (current.progress[key] as number | null | undefined) ?? 0;
    if (x !== y) {
      return x > y;
    }
  }
  return true;
}

/**
 * ``incoming``, still marked ``up_to_date`` when ``current`` was (only the ``POST /jobs`` answer says so;
 * later events and polls describe the job) and it is still the succeeded output that answer reused.
 */
function keepUpToDate(incoming: Job, current: Job | undefined): Job {
  if (current?.up_to_date && !incoming.up_to_date && incoming.state === 'succeeded') {
    return { ...incoming, up_to_date: true };
  }
  return incoming;
}

/** The job list's reducer: pure, returns ``state`` itself when nothing changed. */
export function reduceJobs(state: JobsState, action: JobsAction): JobsState {
  switch (action.type) {
    case 'job':
      return reduceJobs(state, { type: 'jobs', jobs: [action.job] });
    case 'jobs': {
      let jobs: Record<string, Job> | null = null;
      for (const job of action.jobs) {
        const current = (jobs ?? state.jobs)[job.id];
        if (current !== job && isNewer(job, current)) {
          jobs = jobs ?? { ...state.jobs };
          jobs[job.id] = keepUpToDate(job, current);
        }
      }
      return jobs ? { ...state, jobs } : state;
    }
    case 'created': {
      const { job } = action;
      const current = state.jobs[job.id];
      const next = isNewer(job, current) ? job : { ...current!, up_to_date: job.up_to_date };
      const hidden = state.hidden.filter(id => id !== job.id);
      if (next === current && hidden.length === state.hidden.length) {
        return state;
      }
      return { jobs: { ...state.jobs, [job.id]: next }, hidden };
    }
    case 'hide':
      return state.hidden.includes(action.id)
        ? state
        : { ...state, hidden: [...state.hidden, action.id] };
    case 'hideMany': {
      const add = action.ids.filter(id => !state.hidden.includes(id));
      return add.length ? { ...state, hidden: [...state.hidden, ...add] } : state;
    }
    case 'setHidden':
      return { ...state, hidden: [...action.ids] };
  }
}

/** Jobs to show, newest first, without the hidden ones. */
export function visibleJobs(state: JobsState): Job[] {
  const hidden = new Set(state.hidden);
  return Object.values(state.jobs)
    .filter(job => !hidden.has(job.id))
    .sort((a, b) => b.created_at.localeCompare(a.created_at) || a.id.localeCompare(b.id));
}

// -- paths and the DataFrame cell ------------------------------------------------------------------------

/** POSIX path segments of a server-relative path ('' and '.' dropped). */
function segments(path: string): string[] {
  return path.split('/').filter(s => s !== '' && s !== '.');
}

/** ``a`` and ``b`` joined with '/', relative to the server root ('' for the root). */
export function joinPath(...parts: string[]): string {
  return parts.flatMap(segments).join('/');
}

/** The path of ``target`` relative to the folder ``fromDir`` (both relative to the server root). */
export function relativePath(fromDir: string, target: string): string {
  const from = segments(fromDir);
  const to = segments(target);
  let common = 0;
  while (common < from.length && common < to.length && from[common] === to[common]) {
    common += 1;
  }
  const up = from.slice(common).map(() => '..');
  const rel = [...up, ...to.slice(common)].join('/');
  return rel || '.';
}

/** Whether a file-browser item is a staged Parquet dataset folder or part file. */
export function isParquetPath(path: string): boolean {
  return /\.parquet$/i.test(path.replace(/\/+$/, ''));
}

/**
 * The Parquet datasets a job produced, as paths relative to the server root: each ``<stem>.parquet``
 * folder holding part files, or a lone ``.parquet`` file.
 */
export function parquetDatasets(job: Pick<Job, 'destination'>, chunks: readonly Chunk[]): string[] {
  const found: string[] = [];
  for (const chunk of chunks) {
    const parts = segments(chunk.path);
    const folder = parts.findIndex(p => isParquetPath(p));
    if (folder === -1) {
      continue;
    }
    const dataset = joinPath(job.destination, ...parts.slice(0, folder + 1));
    if (!found.includes(dataset)) {
      found.push(dataset);
    }
  }
  return found;
}

/** A Python string literal for ``text`` (double-quoted, backslashes and quotes escaped). */
export function pythonString(text: string): string {
  const escaped = text
    .replace(/\\/g, '\\\\')
    .replace(/"/g, '\\"')
    .replace(/\n/g, '\\n')
    .replace(/\r/g, '\\r')
    .replace(/\t/g, '\\t');
  return `"${escaped}"`;
}

/** The code of the cell that reads a staged Parquet dataset (``relPath`` relative to the notebook). */
export function dataframeCellSource(relPath: string): string {
  return ['import pandas as pd', '', `df = pd.read_parquet(${pythonString(relPath)})`, 'df'].join('\n');
}
