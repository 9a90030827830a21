/**
 * Text for people, from the wire types: byte sizes, rates, times left, counts, short sources, a job's
 * progress line and chunk count, where its tasks run (distributed executors), log lines in human units, and the default destination of a job.
 * Pure functions (re-exported by ``model.ts``); unit-tested under plain node.
 */
import type { Job, Progress, TaskCounts } from './model';

const BYTE_UNITS = ['B', 'kB', 'MB', 'GB', 'TB', 'PB'];

/** Bytes in decimal units with three significant digits: ``0 B``, ``999 B``, ``1.46 MB``, ``143 GB``. */
export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes) || bytes < 0) {
    return '?';
  }
  if (bytes < 1000) {
    return `${Math.round(bytes)} B`;
  }
  let value = bytes;
  let unit = 0;
  while (value >= 999.5 && unit < BYTE_UNITS.length - 1) {
    value /= 1000;
    unit += 1;
  }
  const digits = value >= 99.95 ? 0 : value >= 9.995 ? 1 : 2;
  return `${value.toFixed(digits)} ${BYTE_UNITS[unit]}`;
}

/** A transfer rate (bytes per second): ``1.20 MB/s``; empty when unknown. */
export function formatRate(bytesPerSecond: number | null | undefined): string {
  if (bytesPerSecond === null || bytesPerSecond === undefined || !Number.isFinite(bytesPerSecond)) {
    return '';
  }
  return `${formatBytes(Math.max(0, bytesPerSecond))}/s`;
}

/** Time left: ``45 s``, ``3 min 05 s``, ``2 h 07 min``, ``3 d 4 h``; empty when unknown. */
export function formatEta(seconds: number | null | undefined): string {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) {
    return '';
  }
  const s = Math.ceil(seconds);
  if (s < 60) {
    return `${s} s`;
  }
  const pad = (n: number) => String(n).padStart(2, '0');
  if (s < 3600) {
    return `${Math.floor(s / 60)} min ${pad(s % 60)} s`;
  }
  if (s < 86400) {
    return `${Math.floor(s / 3600)} h ${pad(Math.floor((s % 3600) / 60))} min`;
  }
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/** A count with thousands separators: ``14,280``. */
export function formatCount(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) {
    return '?';
  }
  return Math.round(n)
    .toString()
    .replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

/**
 * A source short enough for a list row: a local path's file name, a URL's host and file name
 * (``https://host/…/name``), an S3 URI's bucket and key name (``s3://bucket/…/name``). Query strings
 * (presigned signatures) are never shown.
 */
export function shortSource(source: string): string {
  const url = /^([a-z][a-z0-9+.-]*):\/\/([^/?#]*)([^?#]*)/i.exec(source);
  const path = url ? url[3] : source;
  const trailing = path.endsWith('/') ? '/' : '';
  const parts = path.split('/').filter(Boolean);
  const name = parts.length ? parts[parts.length - 1] + trailing : '';
  if (!url) {
    return name || source;
  }
  const head = `${url[1].toLowerCase()}://${url[2]}`;
  if (parts.length === 0) {
    return head;
  }
  return parts.length === 1 ? `${head}/${name}` : `${head}/…/${name}`;
}

/** Fraction done in [0, 1] from bytes (or chunks when bytes are unknown); null when no total is known. */
export function progressFraction(job: Pick<Job, 'state' | 'progress'>): number | null {
  if (job.state === 'succeeded') {
    return 1;
  }
  const p = job.progress;
  if (p.bytes_total !== null && p.bytes_total !== undefined && p.bytes_total > 0) {
    return Math.min(1, Math.max(0, p.bytes_done / p.bytes_total));
  }
  if (p.chunks_total !== null && p.chunks_total !== undefined && p.chunks_total > 0) {
    return Math.min(1, Math.max(0, p.chunks_done / p.chunks_total));
  }
  return null;
}

/**
 * The line under a job's progress bar: source bytes done of total (never more than the total; the total
 * alone once the job succeeded), then
 * (while running) rate and time left, then the Parquet bytes written and rows for conversions. For
 * example ``17.0 MB of 90.8 MB · 1.50 MB/s · 51 s``, or for a conversion that succeeded
 * ``1.46 MB · 1.01 MB Parquet · 14,280 rows``.
 */
export function progressSummary(job: Pick<Job, 'state' | 'progress' | 'convert'>): string {
  const p = job.progress;
  const parts: string[] = [];
  const total = p.bytes_total;
  if (job.state === 'succeeded') {
    parts.push(formatBytes(total ?? p.bytes_done));
  } else if (total !== null && total !== undefined) {
    parts.push(`${formatBytes(Math.min(p.bytes_done, total))} of ${formatBytes(total)}`);
  } else {
    parts.push(formatBytes(p.bytes_done));
  }
  if (job.state === 'running') {
    const rate = formatRate(p.rate);
    if (rate) {
      parts.push(rate);
    }
    const eta = formatEta(p.eta_seconds);
    if (eta) {
      parts.push(eta);
    }
  }
  if (p.output_bytes) {
    parts.push(`${formatBytes(p.output_bytes)} Parquet`);
  }
  if (job.convert && p.rows_done > 0) {
    parts.push(`${formatCount(p.rows_done)} rows`);
  }
  return parts.join(' · ');
}

/** Chunks done of total, ``3/3 chunks`` (``2/? chunks`` while the total is unknown); '' for none yet. */
export function chunkCount(progress: Progress): string {
  const total = progress.chunks_total;
  if ((total === null || total === undefined) && !progress.chunks_done) {
    return '';
  }
  const of = total === null || total === undefined ? '?' : formatCount(total);
  return `${formatCount(progress.chunks_done)}/${of} chunks`;
}

/** ``n`` and a noun, plural unless ``n`` is 1: ``1 task``, ``4 tasks``, ``1,024 workers``. */
function countOf(n: number, noun: string): string {
  return `${formatCount(n)} ${noun}${n === 1 ? '' : 's'}`;
}

/**
 * A Dask worker as people read it: its address without the scheme (``tcp://127.0.0.1:40123`` →
 * ``127.0.0.1:40123``, ``tls://[::1]:8786`` → ``[::1]:8786``); a plain name (``worker-0``) as it is.
 */
export function shortWorker(worker: string): string {
  const url = /^[a-z][a-z0-9+.-]*:\/\/([^/?#]+)/i.exec(worker);
  return url ? url[1] : worker;
}

/** The workers running a job's tasks, ``[host:port or name, running tasks]``, busy ones only, by name. */
export function taskWorkers(tasks: TaskCounts): [string, number][] {
  return Object.entries(tasks.workers ?? {})
    .filter(([, n]) => Number.isFinite(n) && n > 0)
    .map(([worker, n]): [string, number] => [shortWorker(worker), n])
    .sort((a, b) => a[0].localeCompare(b[0], undefined, { numeric: true }));
}

/**
 * Where a running job's tasks are, in one short line: ``4 tasks on 2 workers · 3 queued`` (``4 tasks
 * running`` when the server names no worker, ``3 tasks queued`` before any runs; ``· 12 done`` added
 * with ``done``). Empty unless the job is running on a distributed executor (``progress.tasks``).
 */
export function tasksSummary(job: Pick<Job, 'state' | 'progress'>, done = false): string {
  const tasks = job.progress.tasks;
  if (job.state !== 'running' || !tasks) {
    return '';
  }
  const running = tasks.running ?? 0;
  const queued = tasks.queued ?? 0;
  const parts: string[] = [];
  if (running > 0) {
    const workers = taskWorkers(tasks).length;
    parts.push(`${countOf(running, 'task')} ${workers ? `on ${countOf(workers, 'worker')}` : 'running'}`);
  }
  if (queued > 0) {
    parts.push(running > 0 ? `${formatCount(queued)} queued` : `${countOf(queued, 'task')} queued`);
  }
  if (done && parts.length && (tasks.done ?? 0) > 0) {
    parts.push(`${formatCount(tasks.done)} done`);
  }
  return parts.join(' · ');
}

/** The per-worker lines of a job's tasks: ``127.0.0.1:40123: 2 tasks``, one per busy worker. */
export function taskWorkerLines(tasks: TaskCounts | null | undefined): string[] {
  return tasks ? taskWorkers(tasks).map(([worker, n]) => `${worker}: ${countOf(n, 'task')}`) : [];
}

/**
 * Characters that change how the text around them is shown without showing themselves: the Unicode
 * bidirectional controls (after U+202E RIGHT-TO-LEFT OVERRIDE, a file named ``report<U+202E>fdp.exe``
 * reads as ``reportexe.pdf``), and the C0 / C1 control characters other than tab and newline.
 */
const HIDDEN_CONTROLS = new RegExp(
  '[\\u0000-\\u0008\\u000b-\\u001f\\u007f-\\u009f\\u061c\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069]',
  'g'
);

/**
 * ``text`` as the panel shows it: each hidden control character (see above) replaced by a visible
 * ``[U+202E]``, so a file name, source or log line reads as the characters it holds, in their order.
 */
export function visibleText(text: string): string {
  return text.replace(
    HIDDEN_CONTROLS,
    c => `[U+${c.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}]`
  );
}

/**
 * What a failed call to the server means for the user, from the error (``StagingAPIError``: its
 * ``status``, 0 when the server could not be reached, and ``message``; a failed ``fetch`` has no status):
 * the server's own message for a refusal (4xx), ``Server not reachable: …`` when nothing answered;
 * for 401 / 403 that this browser's session is no longer accepted (the server restarted with a new token,
 * or the login expired) and how to get back; for 5xx that the server failed, with its status.
 */
export function failureText(error: unknown): string {
  const { status, message } = (error ?? {}) as { status?: unknown; message?: unknown };
  const text = typeof message === 'string' && message ? message : String(error);
  if (status === 401 || status === 403) {
    return (
      `The server no longer accepts this session (HTTP ${status}: ${text}). ` +
      'Reload JupyterLab to sign in again.'
    );
  }
  if (typeof status === 'number' && status >= 500) {
    return `The server failed (HTTP ${status}): ${text}`;
  }
  if (status === undefined) {
    return `Server not reachable: ${text}`; // fetch itself failed: no answer, no status
  }
  return text; // 4xx refusals, and status 0 whose message already says the server could not be reached
}

/** The first line of an error message, for a one-line summary (the full text is in the job view). */
export function firstLine(message: string): string {
  const line = message.split(/\r?\n/).find(l => l.trim() !== '') ?? '';
  return line.trim();
}

/** The notices of a job (``notices`` list, or a single ``notice``): what the user should know. */
export function jobNotices(job: Pick<Job, 'notices' | 'notice'>): string[] {
  const list = Array.isArray(job.notices) ? job.notices.filter(n => typeof n === 'string' && n) : [];
  if (typeof job.notice === 'string' && job.notice && !list.includes(job.notice)) {
    list.push(job.notice);
  }
  return list;
}

/**
 * ``text`` split for a middle ellipsis: the head (cut by CSS with an ellipsis when the row is narrow) and
 * a tail of ``tail`` characters that always shows, so names sharing a long prefix stay distinguishable.
 */
export function splitForMiddleEllipsis(text: string, tail = 10): [string, string] {
  const chars = Array.from(text);
  if (chars.length <= tail + 4) {
    return [text, ''];
  }
  return [chars.slice(0, -tail).join(''), chars.slice(-tail).join('')];
}

/**
 * A job's log message with byte counts in human units: ``1 file(s) to stage, 90750214 bytes`` becomes
 * ``1 file(s) to stage, 90.8 MB``; an empty destination in ``job created: a -> (copy)`` reads as the
 * server root.
 */
export function humanizeLogMessage(message: string): string {
  return message
    .replace(/\b(\d+) bytes\b/g, (_m, n: string) => formatBytes(Number(n)))
    .replace(/ -> {2}\(/g, ' -> / (server root) (');
}

/**
 * The folder a job without a destination lands in, as the server names it: ``staging/<name>`` where
 * the name is the source's file or folder name without its extension (``default_name`` in the engine's
 * admission); the server adds ``-<key>`` when another request already owns that folder.
 */
export function defaultDestination(nameOrSource: string, stagingDir = 'staging'): string {
  let path = nameOrSource.trim();
  const url = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]*([^?#]*)/i.exec(path);
  if (url) {
    try {
      path = decodeURIComponent(url[1]);
    } catch {
      path = url[1];
    }
  }
  let base = path.replace(/\/+$/, '').split('/').pop() || 'staging';
  for (const suffix of ['.gz', '.bz2', '.fz']) {
    if (base.endsWith(suffix)) {
      base = base.slice(0, -suffix.length);
    }
  }
  const dot = base.lastIndexOf('.');
  const stem = dot > 0 ? base.slice(0, dot) : base;
  const safe = Array.from(stem)
    .map(c => (/[\p{L}\p{N}_.-]/u.test(c) ? c : '_'))
    .join('')
    .replace(/^[._]+|[._]+$/g, '')
    .slice(0, 100);
  const folder = stagingDir.replace(/^\/+|\/+$/g, '');
  return folder ? `${folder}/${safe || 'staging'}` : safe || 'staging';
}

/** The line on a job ``POST /jobs`` answered ``up_to_date``: ``Up to date: kepler/ (no bytes moved)``. */
export function upToDateText(job: Pick<Job, 'destination'>): string {
  return `Up to date: ${job.destination ? `${job.destination}/` : '/ (server root)'} (no bytes moved)`;
}
