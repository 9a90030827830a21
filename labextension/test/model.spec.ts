import { buildCreateRequest, type JobFormValues } from '../src/form';
import {
  actionsFor,
  chunkCount,
  dataframeCellSource,
  defaultDestination,
  firstLine,
  humanizeLogMessage,
  jobNotices,
  splitForMiddleEllipsis,
  EMPTY_JOBS,
  EventStreamParser,
  failureText,
  formatBytes,
  formatCount,
  formatEta,
  formatRate,
  isNewer,
  isParquetPath,
  jobFromEvent,
  joinPath,
  parquetDatasets,
  progressFraction,
  progressSummary,
  pythonString,
  reduceJobs,
  relativePath,
  shortSource,
  visibleJobs,
  visibleText,
  type Chunk,
  type Job
} from '../src/model';

function job(overrides: Partial<Job> & { id: string }, progress: Partial<Job['progress']> = {}): Job {
  return {
    name: overrides.id,
    owner: 'astro',
    state: 'running',
    source: '/archive/kepler/kplr010666592-2009131110544_slc.fits',
    destination: 'kepler',
    method: 'copy',
    convert: null,
    error: null,
    created_at: '2026-11-20T12:00:00Z',
    updated_at: '2026-11-20T12:00:00Z',
    ...overrides,
    progress: {
      bytes_done: 0,
      bytes_total: 1000,
      chunks_done: 0,
      chunks_total: 1,
      rows_done: 0,
      rate: null,
      eta_seconds: null,
      ...progress
    }
  };
}

describe('formatBytes', () => {
  it.each([
    [0, '0 B'],
    [999, '999 B'],
    [1000, '1.00 kB'],
    [1457280, '1.46 MB'],
    [14_300, '14.3 kB'],
    [143_000_000_000, '143 GB'],
    [999_999, '1.00 MB'],
    [2.5e15, '2.50 PB']
  ])('%d bytes -> %s', (bytes, text) => {
    expect(formatBytes(bytes)).toBe(text);
  });

  it('says ? for unknown sizes', () => {
    expect(formatBytes(null)).toBe('?');
    expect(formatBytes(undefined)).toBe('?');
    expect(formatBytes(NaN)).toBe('?');
    expect(formatBytes(-1)).toBe('?');
  });
});

describe('formatRate and formatEta', () => {
  it('formats a rate in bytes per second', () => {
    expect(formatRate(1_200_000)).toBe('1.20 MB/s');
    expect(formatRate(512)).toBe('512 B/s');
    expect(formatRate(null)).toBe('');
  });

  it.each([
    [0, '0 s'],
    [0.2, '1 s'],
    [45, '45 s'],
    [185, '3 min 05 s'],
    [3600 * 2 + 7 * 60 + 30, '2 h 07 min'],
    [86400 * 3 + 3600 * 4, '3 d 4 h']
  ])('%d s left -> %s', (seconds, text) => {
    expect(formatEta(seconds)).toBe(text);
  });

  it('is empty when the ETA is unknown', () => {
    expect(formatEta(null)).toBe('');
    expect(formatEta(undefined)).toBe('');
    expect(formatEta(Infinity)).toBe('');
  });

  it('groups thousands', () => {
    expect(formatCount(14280)).toBe('14,280');
    expect(formatCount(1234567)).toBe('1,234,567');
    expect(formatCount(12)).toBe('12');
  });
});

describe('progress', () => {
  it('is a fraction of bytes, else of chunks, else unknown', () => {
    expect(progressFraction(job({ id: 'a' }, { bytes_done: 250, bytes_total: 1000 }))).toBe(0.25);
    expect(
      progressFraction(job({ id: 'a' }, { bytes_done: 0, bytes_total: null, chunks_done: 1, chunks_total: 4 }))
    ).toBe(0.25);
    expect(progressFraction(job({ id: 'a' }, { bytes_total: null, chunks_total: null }))).toBeNull();
    expect(progressFraction(job({ id: 'a', state: 'succeeded' }, { bytes_total: null }))).toBe(1);
    expect(progressFraction(job({ id: 'a' }, { bytes_done: 2000, bytes_total: 1000 }))).toBe(1);
  });

  it('summarises bytes, rate and time left while running', () => {
    const running = job({ id: 'a' }, { bytes_done: 5_240_000, bytes_total: 10_500_000, rate: 1_200_000, eta_seconds: 4.3 });
    expect(progressSummary(running)).toBe('5.24 MB of 10.5 MB · 1.20 MB/s · 5 s');
    expect(progressSummary({ ...running, state: 'paused' })).toBe('5.24 MB of 10.5 MB');
  });

  it('adds rows for conversions', () => {
    const converted = job(
      { id: 'a', state: 'succeeded', convert: { format: 'parquet', chunk_rows: 5000, compression: 'zstd' } },
      { bytes_done: 1_457_280, bytes_total: 1_457_280, rows_done: 14280 }
    );
    expect(progressSummary(converted)).toBe('1.46 MB · 14,280 rows');
  });

  it('offers the buttons that apply to a state', () => {
    expect(actionsFor('running')).toEqual({ pause: true, resume: false, cancel: true, remove: true });
    expect(actionsFor('queued')).toEqual({ pause: true, resume: false, cancel: true, remove: true });
    expect(actionsFor('paused')).toEqual({ pause: false, resume: true, cancel: true, remove: true });
    expect(actionsFor('succeeded')).toEqual({ pause: false, resume: false, cancel: false, remove: true });
    expect(actionsFor('failed').cancel).toBe(false);
  });
});

describe('EventStreamParser', () => {
  it('parses the server stream, including keep-alive comments', () => {
    const parser = new EventStreamParser();
    const payload = JSON.stringify({ type: 'job', job: job({ id: 'a' }) });
    const events = parser.feed(`data: ${payload}\n\n: keep-alive\n\ndata: {"type":"job"}\n\n`);
    expect(events).toHaveLength(2);
    expect(events[0]).toEqual({ event: 'message', data: payload });
    expect(events[1].data).toBe('{"type":"job"}');
  });

  it('assembles events split across reads at any byte', () => {
    const text = 'data: {"a": 1}\n\ndata: {"b": 2}\n\n';
    for (let cut = 0; cut <= text.length; cut++) {
      const parser = new EventStreamParser();
      const events = [...parser.feed(text.slice(0, cut)), ...parser.feed(text.slice(cut))];
      expect(events.map(e => e.data)).toEqual(['{"a": 1}', '{"b": 2}']);
    }
  });

  it('accepts CRLF and CR line ends, even when a CRLF is split', () => {
    const parser = new EventStreamParser();
    expect(parser.feed('data: one\r')).toEqual([]);
    expect(parser.feed('\n\r\n').map(e => e.data)).toEqual(['one']);
    // A CR at the very end may be half of a CRLF: the event completes with the next piece.
    expect(parser.feed('data: two\r\r')).toEqual([]);
    expect(parser.feed('data: three\r\n\r\n').map(e => e.data)).toEqual(['two', 'three']);
  });

  it('joins data lines, reads event and id fields, ignores the rest', () => {
    const parser = new EventStreamParser();
    const events = parser.feed('event: ping\nid: 7\nretry: 100\ndata: a\ndata:b\nfoo: bar\n\n');
    expect(events).toEqual([{ event: 'ping', data: 'a\nb', id: '7' }]);
    expect(parser.feed('\n\n')).toEqual([]);
  });

  it('keeps an unterminated event until its blank line', () => {
    const parser = new EventStreamParser();
    expect(parser.feed('data: x\n')).toEqual([]);
    expect(parser.feed('\n')).toEqual([{ event: 'message', data: 'x' }]);
  });
});

describe('jobFromEvent', () => {
  it('returns the job of a job event', () => {
    const a = job({ id: 'a' });
    expect(jobFromEvent({ event: 'message', data: JSON.stringify({ type: 'job', job: a }) })).toEqual(a);
  });

  it('ignores other events and malformed data', () => {
    expect(jobFromEvent({ event: 'message', data: 'not json' })).toBeNull();
    expect(jobFromEvent({ event: 'message', data: '{"type": "hello"}' })).toBeNull();
    expect(jobFromEvent({ event: 'message', data: '{"type": "job", "job": {"id": 3}}' })).toBeNull();
    expect(jobFromEvent({ event: 'message', data: 'null' })).toBeNull();
    const a = job({ id: 'a' });
    expect(jobFromEvent({ event: 'other', data: JSON.stringify({ type: 'job', job: a }) })).toBeNull();
  });
});

describe('reduceJobs', () => {
  it('adds and replaces jobs, newest updated_at first', () => {
    let state = reduceJobs(EMPTY_JOBS, { type: 'job', job: job({ id: 'a' }) });
    const later = job({ id: 'a', state: 'succeeded', updated_at: '2026-11-20T12:00:05Z' });
    state = reduceJobs(state, { type: 'job', job: later });
    expect(state.jobs.a.state).toBe('succeeded');
    // An older answer (e.g. a poll that crossed an event) does not undo it.
    const stale = reduceJobs(state, { type: 'jobs', jobs: [job({ id: 'a' })] });
    expect(stale).toBe(state);
  });

  it('at the same updated_at keeps the job that got further', () => {
    const at = { id: 'a', updated_at: '2026-11-20T12:00:01Z' };
    let state = reduceJobs(EMPTY_JOBS, { type: 'job', job: job(at, { bytes_done: 600 }) });
    state = reduceJobs(state, { type: 'job', job: job(at, { bytes_done: 400 }) });
    expect(state.jobs.a.progress.bytes_done).toBe(600);
    state = reduceJobs(state, { type: 'job', job: job(at, { bytes_done: 700 }) });
    expect(state.jobs.a.progress.bytes_done).toBe(700);
    expect(isNewer(job(at, { bytes_done: 700 }), state.jobs.a)).toBe(true);
  });

  it('returns the same state when nothing changes', () => {
    const a = job({ id: 'a' });
    const state = reduceJobs(EMPTY_JOBS, { type: 'job', job: a });
    expect(reduceJobs(state, { type: 'job', job: a })).toBe(state);
    expect(reduceJobs(state, { type: 'jobs', jobs: [] })).toBe(state);
  });

  it('hides removed jobs and lists the rest newest first', () => {
    let state = reduceJobs(EMPTY_JOBS, {
      type: 'jobs',
      jobs: [
        job({ id: 'old', created_at: '2026-11-20T10:00:00Z' }),
        job({ id: 'new', created_at: '2026-11-20T11:00:00Z' }),
        job({ id: 'mid', created_at: '2026-11-20T10:30:00Z' })
      ]
    });
    expect(visibleJobs(state).map(j => j.id)).toEqual(['new', 'mid', 'old']);
    state = reduceJobs(state, { type: 'hide', id: 'mid' });
    expect(reduceJobs(state, { type: 'hide', id: 'mid' })).toBe(state);
    expect(visibleJobs(state).map(j => j.id)).toEqual(['new', 'old']);
    // Later events about a hidden job keep it hidden.
    state = reduceJobs(state, { type: 'job', job: job({ id: 'mid', updated_at: '2026-11-21T00:00:00Z' }) });
    expect(visibleJobs(state).map(j => j.id)).toEqual(['new', 'old']);
    state = reduceJobs(state, { type: 'setHidden', ids: [] });
    expect(visibleJobs(state)).toHaveLength(3);
  });
});

describe('paths and the DataFrame cell', () => {
  it('joins server-relative paths', () => {
    expect(joinPath('', 'a.parquet')).toBe('a.parquet');
    expect(joinPath('kepler/', '/x.parquet/part-00000.parquet')).toBe('kepler/x.parquet/part-00000.parquet');
  });

  it('writes paths relative to the notebook', () => {
    expect(relativePath('', 'kepler/x.parquet')).toBe('kepler/x.parquet');
    expect(relativePath('kepler', 'kepler/x.parquet')).toBe('x.parquet');
    expect(relativePath('notes/deep', 'kepler/x.parquet')).toBe('../../kepler/x.parquet');
    expect(relativePath('kepler/x.parquet', 'kepler/x.parquet')).toBe('.');
  });

  it('recognises Parquet folders and part files', () => {
    expect(isParquetPath('kepler/kplr.parquet')).toBe(true);
    expect(isParquetPath('kepler/kplr.parquet/')).toBe(true);
    expect(isParquetPath('kepler/kplr.parquet/part-00000.parquet')).toBe(true);
    expect(isParquetPath('kepler/kplr.fits')).toBe(false);
  });

  it('finds the datasets a job wrote from its chunks', () => {
    const chunk = (index: number, path: string): Chunk => ({
      id: String(index),
      index,
      path,
      state: 'ready',
      rows: 5000,
      bytes: 1,
      sha256: null,
      content_type: null
    });
    const chunks = [
      chunk(0, 'kplr.parquet/part-00000.parquet'),
      chunk(1, 'kplr.parquet/part-00001.parquet'),
      chunk(2, 'notes.txt'),
      chunk(3, 'single.parquet')
    ];
    expect(parquetDatasets({ destination: 'kepler' }, chunks)).toEqual(['kepler/kplr.parquet', 'kepler/single.parquet']);
    expect(parquetDatasets({ destination: '' }, chunks.slice(0, 1))).toEqual(['kplr.parquet']);
  });

  it('writes a pandas cell with a safe Python string', () => {
    expect(dataframeCellSource('kepler/kplr.parquet')).toBe(
      'import pandas as pd\n\ndf = pd.read_parquet("kepler/kplr.parquet")\ndf'
    );
    expect(pythonString('a"b\\c\nd')).toBe('"a\\"b\\\\c\\nd"');
  });
});

describe('shortSource', () => {
  it.each([
    ['/work/shared/data/kplr010666592-2009131110544_slc.fits', 'kplr010666592-2009131110544_slc.fits'],
    ['/archive/kepler/q1/', 'q1/'],
    ['http://127.0.0.1:8123/survey.bin', 'http://127.0.0.1:8123/survey.bin'],
    ['https://archive.stsci.edu/missions/kepler/lc/kplr.fits?X-Amz-Signature=secret', 'https://archive.stsci.edu/…/kplr.fits'],
    ['s3://bucket/prefix/deep/', 's3://bucket/…/deep/'],
    ['s3://bucket', 's3://bucket']
  ])('%s -> %s', (source, short) => {
    expect(shortSource(source)).toBe(short);
  });
});

describe('buildCreateRequest', () => {
  const values: JobFormValues = {
    source: ' /archive/kepler/kplr.fits ',
    destination: ' kepler ',
    name: '',
    method: '',
    toParquet: false,
    chunkRows: 100000,
    compression: 'zstd'
  };

  it('leaves out what the user left empty', () => {
    expect(buildCreateRequest(values)).toEqual({
      request: { source: '/archive/kepler/kplr.fits', destination: 'kepler' }
    });
  });

  it('adds the conversion, method and name when asked', () => {
    expect(
      buildCreateRequest({ ...values, toParquet: true, chunkRows: '5000', method: 'copy', name: 'kepler-lc' })
    ).toEqual({
      request: {
        source: '/archive/kepler/kplr.fits',
        destination: 'kepler',
        method: 'copy',
        name: 'kepler-lc',
        convert: { format: 'parquet', chunk_rows: 5000, compression: 'zstd' }
      }
    });
  });

  it('refuses an empty source or a bad row count before asking the server', () => {
    expect(buildCreateRequest({ ...values, source: '  ' })).toHaveProperty('error');
    expect(buildCreateRequest({ ...values, toParquet: true, chunkRows: '0' })).toHaveProperty('error');
    expect(buildCreateRequest({ ...values, toParquet: true, chunkRows: '1.5' })).toHaveProperty('error');
  });
});

describe('the dense job row', () => {
  it('never says more bytes done than the total, and shows Parquet bytes apart', () => {
    const convert = { format: 'parquet' as const, chunk_rows: 5000, compression: 'zstd' as const };
    const over = job({ id: 'a', state: 'succeeded', convert }, { bytes_done: 181_500_000, bytes_total: 90_750_214 });
    expect(progressSummary(over)).toBe('90.8 MB');
    expect(progressSummary({ ...over, state: 'running' })).toBe('90.8 MB of 90.8 MB');
    const written = job(
      { id: 'a', state: 'running', convert },
      { bytes_done: 17_000_000, bytes_total: 90_750_214, output_bytes: 4_200_000, rows_done: 5000 }
    );
    expect(progressSummary(written)).toBe('17.0 MB of 90.8 MB · 4.20 MB Parquet · 5,000 rows');
    expect(progressFraction(over)).toBe(1);
  });

  it('counts chunks, also while the total is unknown', () => {
    const p = job({ id: 'a' }).progress;
    expect(chunkCount({ ...p, chunks_done: 3, chunks_total: 3 })).toBe('3/3 chunks');
    expect(chunkCount({ ...p, chunks_done: 2, chunks_total: null })).toBe('2/? chunks');
    expect(chunkCount({ ...p, chunks_done: 8000, chunks_total: 20000 })).toBe('8,000/20,000 chunks');
    expect(chunkCount({ ...p, chunks_done: 0, chunks_total: null })).toBe('');
  });

  it('keeps the end of a long name for a middle ellipsis', () => {
    expect(splitForMiddleEllipsis('short')).toEqual(['short', '']);
    expect(splitForMiddleEllipsis('survey_lightcurve_part_003')).toEqual(['survey_lightcurv', 'e_part_003']);
    const [head, tail] = splitForMiddleEllipsis('survey_lightcurve_part_003');
    expect(head + tail).toBe('survey_lightcurve_part_003');
    expect(tail).toBe('e_part_003');
  });

  it('summarises an error in its first line', () => {
    expect(firstLine('\ncannot reach host: timed out\n  at urllib3 ...')).toBe('cannot reach host: timed out');
    expect(firstLine('one line')).toBe('one line');
  });

  it('reads notices from either field', () => {
    expect(jobNotices({ notices: ['not a table: staged as it is'] })).toEqual(['not a table: staged as it is']);
    expect(jobNotices({ notice: 'x' })).toEqual(['x']);
    expect(jobNotices({})).toEqual([]);
  });

  it('writes log sizes in human units and names the server root', () => {
    expect(humanizeLogMessage('1 file(s) to stage, 90750214 bytes')).toBe('1 file(s) to stage, 90.8 MB');
    expect(humanizeLogMessage('succeeded: 3 chunk(s), 1024 bytes, 14280 rows')).toBe(
      'succeeded: 3 chunk(s), 1.02 kB, 14280 rows'
    );
    expect(humanizeLogMessage('job created: https://h/x.csv ->  (download)')).toBe(
      'job created: https://h/x.csv -> / (server root) (download)'
    );
  });

  it('names the default folder as the server does (staging/<name>)', () => {
    expect(defaultDestination('/data/kplr010666592-2009131110544_slc.fits')).toBe(
      'staging/kplr010666592-2009131110544_slc'
    );
    expect(defaultDestination('https://host/a/survey%20lc.csv.gz?sig=1')).toBe('staging/survey_lc');
    expect(defaultDestination('s3://bucket/prefix/')).toBe('staging/prefix');
    expect(defaultDestination('kepler-lc')).toBe('staging/kepler-lc');
    expect(defaultDestination('')).toBe('staging/staging');
    expect(defaultDestination('x.fits', '')).toBe('x');
  });
});

describe('the form', () => {
  const values: JobFormValues = {
    source: '/archive/k.fits',
    destination: '  ',
    name: '',
    method: '',
    toParquet: true,
    chunkRows: 5000,
    compression: 'zstd'
  };

  it('leaves an empty destination to the server (staging/<name>)', () => {
    expect(buildCreateRequest({ ...values, toParquet: false })).toEqual({ request: { source: '/archive/k.fits' } });
  });

  it('sends the FITS HDU as an index or a name, and the text encoding of a CSV', () => {
    expect(buildCreateRequest({ ...values, hdu: ' 1 ' })).toHaveProperty('request.convert.hdu', 1);
    expect(buildCreateRequest({ ...values, hdu: 'LIGHTCURVE' })).toHaveProperty('request.convert.hdu', 'LIGHTCURVE');
    expect(buildCreateRequest({ ...values, hdu: '' })).not.toHaveProperty('request.convert.hdu');
    expect(buildCreateRequest({ ...values, encoding: ' latin-1 ' })).toHaveProperty(
      'request.convert.encoding',
      'latin-1'
    );
    expect(buildCreateRequest({ ...values, encoding: '' })).not.toHaveProperty('request.convert.encoding');
  });
});

describe('visibleText', () => {
  it('shows bidirectional overrides and control characters instead of obeying them', () => {
    expect(visibleText('report\u202Efdp.exe')).toBe('report[U+202E]fdp.exe');
    expect(visibleText('a\u2066b\u2069c\u200Fd\u0000e\u001bf\u0085g')).toBe(
      'a[U+2066]b[U+2069]c[U+200F]d[U+0000]e[U+001B]f[U+0085]g'
    );
  });

  it('leaves ordinary text, tabs, newlines and right-to-left letters as they are', () => {
    const text = 'kplr010666592_lc.fits\tطيف\nשמש <img src=x onerror=alert(1)> "q\'';
    expect(visibleText(text)).toBe(text);
  });
});

describe('failureText', () => {
  const failure = (status: number | undefined, message: string) => Object.assign(new Error(message), { status });

  it('says a refused session (401, 403) must sign in again, not that the server is unreachable', () => {
    const text = failureText(failure(403, 'Forbidden'));
    expect(text).toContain('HTTP 403: Forbidden');
    expect(text).toContain('Reload JupyterLab to sign in again');
    expect(failureText(failure(401, 'Unauthorized'))).toContain('HTTP 401');
  });

  it('names a server failure with its status, and keeps a refusal as the server worded it', () => {
    expect(failureText(failure(502, 'Bad Gateway'))).toBe('The server failed (HTTP 502): Bad Gateway');
    expect(failureText(failure(400, 'source not found: /x'))).toBe('source not found: /x');
    expect(failureText(failure(0, 'cannot reach the Jupyter server: Failed to fetch'))).toBe(
      'cannot reach the Jupyter server: Failed to fetch'
    );
    expect(failureText(new TypeError('Failed to fetch'))).toBe('Server not reachable: Failed to fetch');
  });
});
