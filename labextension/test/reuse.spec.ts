/** Re-running a staging request: the form's "if the folder already holds this data" and checksum, and the
 * "up to date" answer of ``POST /jobs`` kept on the job's row. */
import { buildCreateRequest, type JobFormValues } from '../src/form';
import { JobsModel, type JobsClient } from '../src/jobs';
import { EMPTY_JOBS, reduceJobs, upToDateText, visibleJobs, type Job } from '../src/model';

const SHA256 = 'sha256:' + 'ab'.repeat(32);
const MD5 = 'md5:' + '0F'.repeat(16);

function job(overrides: Partial<Job> & { id: string }): Job {
  return {
    name: overrides.id,
    owner: 'astro',
    state: 'succeeded',
    source: '/archive/kepler/kplr.fits',
    destination: 'kepler',
    method: 'copy',
    convert: null,
    error: null,
    progress: { bytes_done: 10, bytes_total: 10, chunks_done: 1, chunks_total: 1, rows_done: 0 },
    created_at: '2026-11-20T12:00:00Z',
    updated_at: '2026-11-20T12:00:05Z',
    ...overrides
  };
}

describe('the form asks what to do with data already there', () => {
  const values: JobFormValues = {
    source: '/archive/kepler/kplr.fits',
    destination: 'kepler',
    name: '',
    method: '',
    toParquet: false,
    chunkRows: 100000,
    compression: 'zstd',
    ifExists: 'reuse',
    checksum: ''
  };

  it('leaves out the server defaults: reuse and no checksum', () => {
    expect(buildCreateRequest(values)).toEqual({
      request: { source: '/archive/kepler/kplr.fits', destination: 'kepler' }
    });
  });

  it('sends refresh or error as if_exists', () => {
    expect(buildCreateRequest({ ...values, ifExists: 'refresh' })).toEqual({
      request: { source: '/archive/kepler/kplr.fits', destination: 'kepler', if_exists: 'refresh' }
    });
    expect(buildCreateRequest({ ...values, ifExists: 'error' })).toHaveProperty('request.if_exists', 'error');
  });

  it('sends a checksum, trimmed and in lower case', () => {
    expect(buildCreateRequest({ ...values, checksum: ` ${SHA256} ` })).toHaveProperty(
      'request.checksum',
      SHA256
    );
    const md5 = buildCreateRequest({ ...values, checksum: MD5 });
    expect(md5).toHaveProperty('request.checksum', MD5.toLowerCase());
  });

  it('refuses a malformed checksum before asking the server', () => {
    for (const checksum of ['sha256:abc', 'crc32:0badf00d', SHA256 + '0', 'sha256:' + 'zz'.repeat(32)]) {
      expect(buildCreateRequest({ ...values, checksum })).toEqual({
        error: 'A checksum is sha256:<64 hex digits> or md5:<32 hex digits>.'
      });
    }
  });
});

describe('an up-to-date answer', () => {
  it('says where the data is and that nothing moved', () => {
    expect(upToDateText(job({ id: 'a' }))).toBe('Up to date: kepler/ (no bytes moved)');
    const root = job({ id: 'a', destination: '' });
    expect(upToDateText(root)).toBe('Up to date: / (server root) (no bytes moved)');
  });

  it('stays on the row while later events describe the same succeeded job', () => {
    let state = reduceJobs(EMPTY_JOBS, { type: 'job', job: job({ id: 'a' }) });
    state = reduceJobs(state, { type: 'created', job: job({ id: 'a', up_to_date: true }) });
    expect(state.jobs.a.up_to_date).toBe(true);
    const polled = job({ id: 'a', up_to_date: false, updated_at: '2026-11-20T12:01:00Z' });
    state = reduceJobs(state, { type: 'jobs', jobs: [polled] });
    expect(state.jobs.a.up_to_date).toBe(true);
    const expired = job({ id: 'a', state: 'expired', updated_at: '2026-11-20T13:00:00Z' });
    state = reduceJobs(state, { type: 'job', job: expired });
    expect(state.jobs.a.up_to_date).toBeFalsy();
  });

  it('is dropped by a later answer that moved bytes, and shows a job the user had hidden', () => {
    let state = reduceJobs(EMPTY_JOBS, { type: 'created', job: job({ id: 'a', up_to_date: true }) });
    state = reduceJobs(state, { type: 'hide', id: 'a' });
    expect(visibleJobs(state)).toEqual([]);
    state = reduceJobs(state, { type: 'created', job: job({ id: 'a', up_to_date: true }) });
    expect(visibleJobs(state).map(j => j.id)).toEqual(['a']);
    state = reduceJobs(state, { type: 'created', job: job({ id: 'a', up_to_date: false }) });
    expect(state.jobs.a.up_to_date).toBe(false);
  });

  it('is what JobsModel.create returns and keeps', async () => {
    const answer = job({ id: 'a', up_to_date: true });
    const client = { createJob: jest.fn().mockResolvedValue(answer) } as unknown as JobsClient;
    const model = new JobsModel({ client });
    const created = await model.create({ source: '/archive/kepler/kplr.fits', destination: 'kepler' });
    expect(created.up_to_date).toBe(true);
    expect(model.job('a')?.up_to_date).toBe(true);
    model.dispose();
  });
});
