/**
 * Which jobs started from this browser have ended, and what their notification says. Pure functions (no
 * JupyterLab imports), unit-tested under plain node; ``notify.ts`` raises the notifications.
 */
import { firstLine, isFinal, visibleText, type Job, type JobState } from './model';

/** What a finished job's notification says, and which of its actions apply. */
export interface Ending {
  kind: 'success' | 'error';
  message: string;
  /** "Open" (the destination folder in the file browser): on success. */
  open: boolean;
  /** "DataFrame" (a cell reading the Parquet output): on success with Parquet output only. */
  dataframe: boolean;
}

/** The reason a job failed on one line, as its row shows it: ``source_not_found: no such file``. */
export function failureReason(job: Pick<Job, 'error'>): string {
  if (!job.error) {
    return 'no reason given';
  }
  const message = firstLine(job.error.message);
  return message ? `${job.error.code}: ${message}` : job.error.code;
}

/**
 * The notification of a job that ended: ``succeeded`` (with the folder and, when ``parquet`` lists
 * datasets, the DataFrame action) or ``failed`` (with the one-line reason). Null for other states
 * (cancelled by the user, expired, or not ended).
 */
export function endingOf(job: Job, parquet: readonly string[]): Ending | null {
  const folder = job.destination ? `${job.destination}/` : '/ (server root)';
  if (job.state === 'succeeded') {
    return {
      kind: 'success',
      message: visibleText(`Staged ${job.name} into ${folder}`),
      open: true,
      dataframe: parquet.length > 0
    };
  }
  if (job.state === 'failed') {
    return {
      kind: 'error',
      message: visibleText(`Staging ${job.name} failed: ${failureReason(job)}`),
      open: false,
      dataframe: false
    };
  }
  return null;
}

/**
 * The jobs of ``watched`` (id → the state last seen, from this browser's submissions) that ``jobs``
 * shows in a final state: they ended since they were last seen. Their ids leave ``watched``; the
 * states of the others are brought up to date. Mutates ``watched``.
 */
export function takeEnded(watched: Map<string, JobState>, jobs: Readonly<Record<string, Job>>): Job[] {
  const ended: Job[] = [];
  for (const [id, before] of watched) {
    const job = jobs[id];
    if (!job || job.state === before) {
      continue;
    }
    if (isFinal(job.state)) {
      watched.delete(id);
      ended.push(job);
    } else {
      watched.set(id, job.state);
    }
  }
  return ended;
}
