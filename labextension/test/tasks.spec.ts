/** Where a job's tasks run on a distributed executor (src/format.ts): the row's line and its tooltip. */
import { shortWorker, taskWorkerLines, tasksSummary } from '../src/format';
import type { Job, JobState, TaskCounts } from '../src/model';

/** The example: 3 queued, 4 running (2 on each of two workers), 12 done. */
const TASKS: TaskCounts = {
  queued: 3,
  running: 4,
  done: 12,
  workers: { 'tcp://127.0.0.1:40777': 2, 'tcp://127.0.0.1:40123': 2 }
};

function job(state: JobState, tasks: TaskCounts | null | undefined): Pick<Job, 'state' | 'progress'> {
  return {
    state,
    progress: { bytes_done: 1000, bytes_total: 4000, chunks_done: 12, chunks_total: 19, rows_done: 0, tasks }
  };
}

describe('shortWorker', () => {
  it('drops the scheme of a worker address', () => {
    expect(shortWorker('tcp://127.0.0.1:40123')).toBe('127.0.0.1:40123');
    expect(shortWorker('tls://[::1]:8786')).toBe('[::1]:8786');
  });

  it('keeps a plain worker name as it is', () => {
    expect(shortWorker('worker-0')).toBe('worker-0');
  });
});

describe('tasksSummary', () => {
  it('says how many tasks run on how many workers, and how many wait', () => {
    expect(tasksSummary(job('running', TASKS))).toBe('4 tasks on 2 workers · 3 queued');
  });

  it('adds the tasks done when asked (the job view)', () => {
    expect(tasksSummary(job('running', TASKS), true)).toBe('4 tasks on 2 workers · 3 queued · 12 done');
  });

  it('counts in the singular and without queued tasks', () => {
    const one = { queued: 0, running: 1, done: 0, workers: { 'tcp://127.0.0.1:40123': 1 } };
    expect(tasksSummary(job('running', one))).toBe('1 task on 1 worker');
  });

  it('says "queued" before any task runs, and "running" when no worker is named', () => {
    expect(tasksSummary(job('running', { queued: 5, running: 0, done: 0, workers: {} }))).toBe('5 tasks queued');
    expect(tasksSummary(job('running', { queued: 0, running: 2, done: 0, workers: {} }))).toBe('2 tasks running');
  });

  it('is empty for a paused job, a job on threads (null tasks) and a finished job', () => {
    expect(tasksSummary(job('paused', TASKS))).toBe('');
    expect(tasksSummary(job('running', null))).toBe('');
    expect(tasksSummary(job('running', undefined))).toBe('');
    expect(tasksSummary(job('succeeded', TASKS))).toBe('');
  });
});

describe('taskWorkerLines', () => {
  it('lists each busy worker as host:port with its tasks, in address order', () => {
    expect(taskWorkerLines(TASKS)).toEqual(['127.0.0.1:40123: 2 tasks', '127.0.0.1:40777: 2 tasks']);
  });

  it('leaves out idle workers and orders ports by number', () => {
    const tasks = {
      queued: 0,
      running: 3,
      done: 0,
      workers: { 'tcp://127.0.0.1:9000': 1, 'tcp://127.0.0.1:10000': 2, 'tcp://127.0.0.1:8000': 0 }
    };
    expect(taskWorkerLines(tasks)).toEqual(['127.0.0.1:9000: 1 task', '127.0.0.1:10000: 2 tasks']);
  });

  it('is empty without tasks', () => {
    expect(taskWorkerLines(null)).toEqual([]);
    expect(taskWorkerLines(undefined)).toEqual([]);
  });
});
