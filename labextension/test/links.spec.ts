/** Shareable staging links (src/links.ts) and the notifications' content (src/endings.ts). */
import { endingOf, failureReason, takeEnded } from '../src/endings';
import { buildStagingLink, linkOfJob, parseStagingLink, withoutStagingLink } from '../src/links';
import type { Job, JobState } from '../src/model';

function job(overrides: Partial<Job> = {}): Job {
  return {
    id: 'j1',
    name: 'kepler',
    owner: 'ann',
    state: 'running',
    source: '/archive/kepler/kplr.fits',
    destination: 'staging/kepler',
    method: 'copy',
    convert: null,
    progress: { bytes_done: 0, bytes_total: 10, chunks_done: 0, chunks_total: 1, rows_done: 0 },
    error: null,
    created_at: '2026-12-01T12:00:00Z',
    updated_at: '2026-12-01T12:00:00Z',
    ...overrides
  };
}

describe('parseStagingLink', () => {
  it('reads source, destination and to_parquet', () => {
    expect(parseStagingLink('?stage=%2Fdata%2Fa.fits&dest=kepler%2Fq1&to_parquet=1')).toEqual({
      source: '/data/a.fits',
      destination: 'kepler/q1',
      toParquet: true
    });
  });

  it('keeps a URL source with its own query intact', () => {
    const source = 'https://archive.example/get?id=7&band=r';
    const link = parseStagingLink(`stage=${encodeURIComponent(source)}`);
    expect(link).toEqual({ source, destination: '', toParquet: false });
  });

  it.each([
    ['to_parquet=true', true],
    ['to_parquet=YES', true],
    ['to_parquet=0', false],
    ['to_parquet=', false],
    ['', false]
  ])('reads %s as %s', (query, expected) => {
    expect(parseStagingLink(`?stage=a.csv&${query}`)!.toParquet).toBe(expected);
  });

  it.each([
    ['no stage parameter', '?dest=x&to_parquet=1'],
    ['an empty source', '?stage=%20%20&dest=x'],
    ['a NUL in the source', '?stage=a%00b'],
    ['a newline in the destination', '?stage=a&dest=x%0Ay'],
    ['a source too long', `?stage=${'a'.repeat(5000)}`],
    ['an ordinary lab URL', '?reset&token=abc']
  ])('is null for %s', (_what, query) => {
    expect(parseStagingLink(query)).toBeNull();
  });
});

describe('withoutStagingLink', () => {
  it('drops only the staging parameters', () => {
    expect(withoutStagingLink('http://127.0.0.1:8888/lab?stage=a&dest=b&to_parquet=1&reset=')).toBe(
      'http://127.0.0.1:8888/lab?reset='
    );
  });

  it('leaves no bare "?" behind', () => {
    expect(withoutStagingLink('http://h/user/ann/lab/tree/x?stage=a')).toBe('http://h/user/ann/lab/tree/x');
  });
});

describe('buildStagingLink', () => {
  const link = { source: '/archive/kepler/kplr 1.fits', destination: 'kepler/q1', toParquet: true };

  it('points at the server lab page under its base URL', () => {
    expect(buildStagingLink(link, { baseUrl: 'http://127.0.0.1:8888/' })).toBe(
      'http://127.0.0.1:8888/lab?stage=%2Farchive%2Fkepler%2Fkplr+1.fits&dest=kepler%2Fq1&to_parquet=1'
    );
  });

  it('goes through user-redirect under a hub, whoever opens it', () => {
    const url = buildStagingLink(link, { baseUrl: 'https://hub.example/user/ann/', hubPrefix: '/hub/' });
    expect(url.startsWith('https://hub.example/hub/user-redirect/lab?stage=')).toBe(true);
    expect(url).not.toContain('/user/ann/');
  });

  it('leaves out an empty destination and to_parquet when not converting', () => {
    expect(
      buildStagingLink({ source: 's3://b/k', destination: '', toParquet: false }, { baseUrl: 'http://h/x/' })
    ).toBe('http://h/x/lab?stage=s3%3A%2F%2Fb%2Fk');
  });

  it('round-trips through parseStagingLink', () => {
    for (const values of [
      link,
      { source: 'https://a.example/q?x=1&y=2#f', destination: '', toParquet: false },
      { source: '/data/é ü.csv', destination: 'tables/über', toParquet: true }
    ]) {
      const url = new URL(buildStagingLink(values, { baseUrl: 'http://127.0.0.1:9/base/' }));
      expect(parseStagingLink(url.search)).toEqual(values);
    }
  });

  it('builds from a job: its source, destination and whether it converted', () => {
    const converted = job({ convert: { format: 'parquet', chunk_rows: 10, compression: 'zstd' } });
    expect(linkOfJob(converted)).toEqual({
      source: '/archive/kepler/kplr.fits',
      destination: 'staging/kepler',
      toParquet: true
    });
    expect(linkOfJob(job()).toParquet).toBe(false);
  });

  it('carries the FITS HDU and the CSV encoding of a conversion, both ways', () => {
    const named = job({
      convert: { format: 'parquet', chunk_rows: 10, compression: 'zstd', hdu: 1, encoding: 'iso8859-1' }
    });
    const link = linkOfJob(named);
    expect(link).toEqual({
      source: '/archive/kepler/kplr.fits',
      destination: 'staging/kepler',
      toParquet: true,
      hdu: '1',
      encoding: 'iso8859-1'
    });
    const url = new URL(buildStagingLink(link, { baseUrl: 'http://127.0.0.1:9/' }));
    expect(url.searchParams.get('hdu')).toBe('1');
    expect(url.searchParams.get('encoding')).toBe('iso8859-1');
    expect(parseStagingLink(url.search)).toEqual(link);
    expect(parseStagingLink('?stage=a.csv&hdu=1&encoding=latin-1')).toEqual({
      source: 'a.csv',
      destination: '',
      toParquet: false
    }); // without to_parquet they mean nothing
    expect(parseStagingLink('?stage=a.csv&to_parquet=1&encoding=%0Alatin-1')).toBeNull();
    expect(withoutStagingLink('http://h/lab?stage=a&to_parquet=1&hdu=2&encoding=cp1252&reset=')).toBe(
      'http://h/lab?reset='
    );
  });
});

describe('notifications of jobs that end', () => {
  it('reports each watched job once, when it reaches a final state', () => {
    const watched = new Map<string, JobState>([
      ['j1', 'queued'],
      ['j2', 'queued']
    ]);
    const unwatched = job({ id: 'j3', state: 'succeeded' });
    expect(takeEnded(watched, { j1: job({ state: 'running' }), j3: unwatched })).toEqual([]);
    expect(watched.get('j1')).toBe('running');
    const done = job({ state: 'succeeded' });
    expect(takeEnded(watched, { j1: done, j3: unwatched })).toEqual([done]);
    expect(takeEnded(watched, { j1: done, j3: unwatched })).toEqual([]);
    expect([...watched.keys()]).toEqual(['j2']);
  });

  it('says where a success went, with DataFrame only for Parquet output', () => {
    const done = job({ state: 'succeeded' });
    expect(endingOf(done, [])).toEqual({
      kind: 'success',
      message: 'Staged kepler into staging/kepler/',
      open: true,
      dataframe: false
    });
    expect(endingOf(done, ['staging/kepler/kplr.parquet'])!.dataframe).toBe(true);
    expect(endingOf({ ...done, destination: '' }, [])!.message).toBe('Staged kepler into / (server root)');
  });

  it('gives a failure its one-line reason and no actions', () => {
    const failed = job({
      state: 'failed',
      error: { code: 'source_not_found', message: '\nno such file: kplr.fits\ndetails follow' }
    });
    expect(failureReason(failed)).toBe('source_not_found: no such file: kplr.fits');
    expect(endingOf(failed, [])).toEqual({
      kind: 'error',
      message: 'Staging kepler failed: source_not_found: no such file: kplr.fits',
      open: false,
      dataframe: false
    });
  });

  it('says nothing of a cancelled job or one still running', () => {
    expect(endingOf(job({ state: 'cancelled' }), [])).toBeNull();
    expect(endingOf(job(), [])).toBeNull();
  });
});
