import { DATASET_PAGE, JobsModel, PARQUET_FETCHES, type JobsClient } from '../src/jobs';
import type { Job, ListJobsResponse } from '../src/model';

function job(id: string, state: Job['state'] = 'running', bytes = 0, updated = '2026-11-20T12:00:00Z'): Job {
  return {
    id,
    name: id,
    owner: 'astro',
    state,
    source: `/archive/${id}.fits`,
    destination: 'staging',
    method: 'copy',
    convert: null,
    error: null,
    progress: { bytes_done: bytes, bytes_total: 100, chunks_done: 0, chunks_total: 1, rows_done: 0 },
    created_at: '2026-11-20T12:00:00Z',
    updated_at: updated
  };
}

/** A streaming ``Response`` whose body the test writes to, like ``GET /events``. */
function eventStream(): { response: Response; send: (text: string) => void; close: () => void } {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    }
  });
  const encoder = new TextEncoder();
  return {
    response: new Response(body, { headers: { 'Content-Type': 'text/event-stream' } }),
    send: text => controller.enqueue(encoder.encode(text)),
    close: () => controller.close()
  };
}

const event = (j: Job) => `data: ${JSON.stringify({ type: 'job', job: j })}\n\n`;

function until(predicate: () => boolean, timeout = 5000): Promise<void> {
  const deadline = Date.now() + timeout;
  return new Promise((resolve, reject) => {
    const check = () => {
      if (predicate()) {
        resolve();
      } else if (Date.now() > deadline) {
        reject(new Error('timed out'));
      } else {
        setTimeout(check, 10);
      }
    };
    check();
  });
}

function fakeClient(overrides: Partial<JobsClient>): JobsClient & { polls: number } {
  const client = {
    polls: 0,
    async listJobs(): Promise<ListJobsResponse> {
      client.polls += 1;
      return { jobs: [], next_cursor: null };
    },
    getJob: jest.fn(),
    createJob: jest.fn(),
    pause: jest.fn(),
    resume: jest.fn(),
    cancel: jest.fn(),
    chunkPage: jest.fn(),
    log: jest.fn(),
    openEvents: jest.fn(),
    ...overrides
  };
  return client as unknown as JobsClient & { polls: number };
}

describe('JobsModel', () => {
  let model: JobsModel | null = null;
  afterEach(() => {
    model?.dispose();
    model = null;
  });

  it('follows the event stream, events split anywhere, after listing the finished jobs', async () => {
    const stream = eventStream();
    const client = fakeClient({
      listJobs: async () => ({ jobs: [job('done', 'succeeded', 100)], next_cursor: null }),
      openEvents: async () => stream.response
    });
    model = new JobsModel({ client });
    await model.start();
    await until(() => model!.status === 'live');
    const text = event(job('a', 'running', 10)) + ': keep-alive\n\n' + event(job('a', 'running', 60));
    stream.send(text.slice(0, 25));
    stream.send(text.slice(25, 200));
    stream.send(text.slice(200));
    await until(() => model!.job('a')?.progress.bytes_done === 60);
    expect(model.jobs.map(j => j.id).sort()).toEqual(['a', 'done']);
    expect(model.status).toBe('live');
  });

  it('knows when the server holds more jobs than it listed, and how many the user cleared', async () => {
    let cursor: string | null = 'next';
    const client = fakeClient({
      listJobs: async () => ({ jobs: [job('old', 'succeeded', 100), job('new', 'failed', 0)], next_cursor: cursor }),
      openEvents: async () => {
        throw new Error('no stream');
      }
    });
    model = new JobsModel({ client });
    await model.start();
    await until(() => model!.jobs.length === 2);
    expect(model.hasMore).toBe(true);
    expect(model.hiddenCount).toBe(0);
    await model.clearFinished();
    expect(model.jobs).toEqual([]);
    expect(model.hiddenCount).toBe(2);
    cursor = null;
    await model.refresh();
    expect(model.hasMore).toBe(false);
  });

  it('polls while the stream is refused, and goes live once it opens', async () => {
    const stream = eventStream();
    let attempts = 0;
    const client = fakeClient({
      openEvents: async () => {
        attempts += 1;
        if (attempts === 1) {
          throw new Error('HTTP 503');
        }
        return stream.response;
      }
    });
    model = new JobsModel({ client });
    model.refreshInterval = 0.5;
    await model.start();
    await until(() => model!.status === 'polling');
    const pollsWhileDown = client.polls;
    await until(() => model!.status === 'live', 4000);
    expect(attempts).toBe(2);
    expect(client.polls).toBeGreaterThan(pollsWhileDown);
    stream.send(event(job('b')));
    await until(() => model!.job('b') !== undefined);
  });

  it('falls back to polling when the stream ends', async () => {
    const stream = eventStream();
    const polled: Job[] = [job('c', 'running', 10, '2026-11-20T12:00:00Z')];
    const client = fakeClient({
      openEvents: async () => stream.response,
      listJobs: async () => {
        (client as { polls: number }).polls += 1;
        return { jobs: polled, next_cursor: null };
      }
    });
    model = new JobsModel({ client });
    model.refreshInterval = 0.5;
    await model.start();
    await until(() => model!.status === 'live');
    stream.close();
    await until(() => model!.status !== 'live');
    polled[0] = job('c', 'succeeded', 100, '2026-11-20T12:00:09Z');
    await until(() => model!.job('c')?.state === 'succeeded');
  });

  it('only polls when live updates are off', async () => {
    const client = fakeClient({});
    model = new JobsModel({ client });
    model.refreshInterval = 0.5;
    model.liveUpdates = false;
    await model.start();
    await until(() => client.polls >= 3, 3000);
    expect(client.openEvents).not.toHaveBeenCalled();
    expect(model.status).toBe('polling');
  });

  it('cancels an unfinished job before removing it, and only hides a finished one', async () => {
    const cancelled = job('r', 'cancelled', 0, '2026-11-20T12:00:05Z');
    const client = fakeClient({
      cancel: jest.fn(async () => undefined),
      getJob: jest.fn(async () => cancelled)
    });
    model = new JobsModel({ client });
    model.dispatch({ type: 'jobs', jobs: [job('r', 'running'), job('f', 'succeeded')] });
    await model.remove('r');
    expect(client.cancel).toHaveBeenCalledWith('r');
    await model.remove('f');
    expect(client.cancel).toHaveBeenCalledTimes(1);
    expect(model.jobs).toEqual([]);
    expect(model.job('r')?.state).toBe('cancelled');
  });

  it('clears finished jobs from the list and remembers it; running ones stay', async () => {
    const saved: Record<string, unknown> = {};
    const state = {
      fetch: async (key: string) => saved[key],
      save: async (key: string, value: unknown) => {
        saved[key] = value;
      }
    };
    model = new JobsModel({ client: fakeClient({}), state: state as never });
    model.dispatch({
      type: 'jobs',
      jobs: [job('ok', 'succeeded'), job('bad', 'failed'), job('run', 'running'), job('gone', 'cancelled')]
    });
    expect(await model.clearFinished()).toBe(3);
    expect(model.jobs.map(j => j.id)).toEqual(['run']);
    expect((saved['jupyter-staging:hidden-jobs'] as string[]).slice().sort()).toEqual(['bad', 'gone', 'ok']);
    expect(await model.clearFinished()).toBe(0);
  });

  it('knows which succeeded jobs produced Parquet, asking for their chunks once', async () => {
    const chunk = (path: string) => ({
      id: path, index: 0, path, state: 'ready', rows: 1, bytes: 1, sha256: null, content_type: null
    });
    const chunks = jest.fn(async (id: string) => {
      const found = id === 'table' ? [chunk('t.parquet/part-00000.parquet')] : [chunk('image.fits')];
      return { chunks: found, total: 1 };
    });
    model = new JobsModel({ client: fakeClient({ chunkPage: chunks as never }) });
    const convert = { format: 'parquet' as const, chunk_rows: 10, compression: 'zstd' as const };
    const table = { ...job('table', 'succeeded'), convert, destination: 'staging/t' };
    const image = { ...job('image', 'succeeded'), convert };
    expect(model.parquetOf(table)).toBeUndefined();
    expect(model.parquetOf(image)).toBeUndefined();
    await until(() => model!.parquetOf(table) !== undefined && model!.parquetOf(image) !== undefined);
    expect(model.parquetOf(table)).toEqual(['staging/t/t.parquet']);
    expect(model.parquetOf(image)).toEqual([]);
    expect(model.parquetOf(job('plain', 'succeeded'))).toEqual([]);
    expect(chunks).toHaveBeenCalledTimes(2);
  });

  it('asks for the chunks of many succeeded conversions a few at a time', async () => {
    let inFlight = 0;
    let most = 0;
    const chunks = jest.fn(async () => {
      inFlight += 1;
      most = Math.max(most, inFlight);
      await new Promise(resolve => setTimeout(resolve, 5));
      inFlight -= 1;
      return { chunks: [], total: 0 };
    });
    model = new JobsModel({ client: fakeClient({ chunkPage: chunks as never }) });
    const convert = { format: 'parquet' as const, chunk_rows: 10, compression: 'zstd' as const };
    const jobs = Array.from({ length: 40 }, (_, i) => ({ ...job(`t${i}`, 'succeeded'), convert }));
    jobs.forEach(j => expect(model!.parquetOf(j)).toBeUndefined());
    await until(() => jobs.every(j => model!.parquetOf(j) !== undefined), 5000);
    expect(chunks).toHaveBeenCalledTimes(40);
    expect(most).toBe(PARQUET_FETCHES);
  });

  it('finds every dataset of a job of many chunks, a page at a time, once', async () => {
    // 3 tables: "big" writes 2.5 pages of parts, "mid" and "tail" one part each after them.
    const paths = [
      ...Array.from({ length: DATASET_PAGE * 2 + DATASET_PAGE / 2 }, (_, i) => `big.parquet/part-${i}.parquet`),
      'mid.parquet/part-00000.parquet',
      'tail.parquet/part-00000.parquet'
    ];
    const all = paths.map((path, index) => ({
      id: String(index), index, path, state: 'ready', rows: 1000, bytes: 1, sha256: null, content_type: null
    }));
    const asked: [number, number][] = [];
    const chunkPage = jest.fn(async (_id: string, offset: number, limit: number) => {
      asked.push([offset, limit]);
      await new Promise(resolve => setTimeout(resolve, 1));
      return { chunks: all.slice(offset, offset + limit), total: all.length };
    });
    model = new JobsModel({ client: fakeClient({ chunkPage: chunkPage as never }) });
    const convert = { format: 'parquet' as const, chunk_rows: 1000, compression: 'zstd' as const };
    const done = { ...job('many', 'succeeded'), convert, destination: 'out' };
    const expected = ['out/big.parquet', 'out/mid.parquet', 'out/tail.parquet'];
    // The job view, a notification and the DataFrame command ask at the same moment: one read.
    const answers = await Promise.all([model.datasets(done), model.datasets(done), model.datasets(done)]);
    answers.forEach(found => expect(found).toEqual(expected));
    expect(asked).toEqual([
      [0, DATASET_PAGE],
      [DATASET_PAGE, DATASET_PAGE],
      [DATASET_PAGE * 2, DATASET_PAGE]
    ]);
    // Kept: the panel's row knows them at once, and asking again reads nothing.
    expect(model.parquetOf(done)).toEqual(expected);
    expect(await model.datasets(done)).toEqual(expected);
    expect(chunkPage).toHaveBeenCalledTimes(3);
  });

  it('reads the datasets again after a failed read, and keeps none of a job still running', async () => {
    let fail = true;
    const chunkPage = jest.fn(async () => {
      if (fail) {
        throw new Error('Bad Gateway');
      }
      const chunk = { id: '0', index: 0, path: 't.parquet/part-0.parquet', state: 'ready', rows: 1, bytes: 1 };
      return { chunks: [{ ...chunk, sha256: null, content_type: null }], total: 1 };
    });
    model = new JobsModel({ client: fakeClient({ chunkPage: chunkPage as never }) });
    const convert = { format: 'parquet' as const, chunk_rows: 1000, compression: 'zstd' as const };
    const done = { ...job('t', 'succeeded'), convert };
    await expect(model.datasets(done)).rejects.toThrow('Bad Gateway');
    fail = false;
    expect(await model.datasets(done)).toEqual(['staging/t.parquet']);
    const running = { ...job('r', 'running'), convert };
    expect(await model.datasets(running)).toEqual(['staging/t.parquet']);
    expect(await model.datasets(running)).toEqual(['staging/t.parquet']);
    expect(chunkPage).toHaveBeenCalledTimes(4);
  });
});

describe('JobsModel datasets with gaps in the chunk indexes', () => {
  it('reads every page: offset is an index, total a count', async () => {
    // 7,500 chunks at indexes 0-2,499 and 10,000-14,999 (as the server answers: index >= offset, in order);
    // "tail" only among the last. The read stopped when the next index (12,500) passed the count (7,500).
    const at = (index: number, path: string) => ({
      id: String(index), index, path, state: 'ready', rows: 1, bytes: 1, sha256: null, content_type: null
    });
    const all = [
      ...Array.from({ length: 2500 }, (_, i) => at(i, `big.parquet/part-${i}.parquet`)),
      ...Array.from({ length: 2500 }, (_, i) => at(10_000 + i, `big.parquet/part-${2500 + i}.parquet`)),
      ...Array.from({ length: 2500 }, (_, i) => at(12_500 + i, `tail.parquet/part-${i}.parquet`))
    ];
    const chunkPage = jest.fn(async (_id: string, offset: number, limit: number) => ({
      chunks: all.filter(c => c.index >= offset).slice(0, limit),
      total: all.length
    }));
    const model = new JobsModel({ client: fakeClient({ chunkPage: chunkPage as never }) });
    const convert = { format: 'parquet' as const, chunk_rows: 1, compression: 'zstd' as const };
    const done = { ...job('gaps', 'succeeded'), convert, destination: 'out' };
    expect(DATASET_PAGE).toBe(5000);
    expect(await model.datasets(done)).toEqual(['out/big.parquet', 'out/tail.parquet']);
    expect(chunkPage.mock.calls.map(call => call[1])).toEqual([0, 12_500]);
    model.dispose();
  });
});
