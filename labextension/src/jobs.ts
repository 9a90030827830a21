/**
 * ``JobsModel``: the job list the panel shows, kept current from the server's event stream
 * (``GET /events``, read as a fetch stream through ``ServerConnection.makeRequest``), falling back to
 * polling ``GET /jobs`` while the stream is down and retrying it with a growing delay.
 */
import type { IStateDB } from '@jupyterlab/statedb';
import type { IDisposable } from '@lumino/disposable';
import { Signal, type ISignal } from '@lumino/signaling';

import type { StagingClient } from './api';
import {
  EMPTY_JOBS,
  EventStreamParser,
  failureText,
  isFinal,
  jobFromEvent,
  parquetDatasets,
  reduceJobs,
  visibleJobs,
  type CreateJobRequest,
  type Job,
  type JobsAction,
  type JobsState
} from './model';

/** ``live``: following the event stream; ``polling``: the stream is down (or off), polling instead. */
export type ConnectionStatus = 'connecting' | 'live' | 'polling';

const HIDDEN_KEY = 'jupyter-staging:hidden-jobs';
/** The most jobs the panel lists: the newest ones (``GET /jobs?limit=``). */
export const LIST_LIMIT = 200;
const MAX_HIDDEN = 2000;
const MAX_BACKOFF_MS = 30_000;
/** Chunk lists fetched at once to find the Parquet datasets of succeeded conversions in the list. */
export const PARQUET_FETCHES = 4;
/** Chunks asked for in one request (``GET /jobs/{id}/chunks?limit=``) while reading a job's datasets. */
export const DATASET_PAGE = 5000;
/**
 * The server sends a keep-alive comment every 15 s on an idle stream, and its response headers with the
 * first write: a stream silent for longer than this is dead (or buffered by a proxy), so poll instead.
 */
const STREAM_SILENCE_MS = 40_000;

/** The calls the model makes (``StagingClient``; a fake in the unit tests). */
export type JobsClient = Pick<
  StagingClient,
  | 'listJobs'
  | 'getJob'
  | 'createJob'
  | 'pause'
  | 'resume'
  | 'cancel'
  | 'chunkPage'
  | 'log'
  | 'openEvents'
>;

export class JobsModel implements IDisposable {
  constructor(options: { client: JobsClient; state?: IStateDB | null }) {
    this.client = options.client;
    this._stateDB = options.state ?? null;
  }

  readonly client: JobsClient;

  /** Emitted after any change of jobs, status or error. */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Emitted with the answer to each ``POST /jobs`` this model made (a job started from this browser). */
  get created(): ISignal<this, Job> {
    return this._created;
  }

  get state(): JobsState {
    return this._state;
  }

  /** The jobs to show, newest first. */
  get jobs(): Job[] {
    if (this._visible === null) {
      this._visible = visibleJobs(this._state);
    }
    return this._visible;
  }

  job(id: string): Job | undefined {
    return this._state.jobs[id];
  }

  get status(): ConnectionStatus {
    return this._status;
  }

  /** True when the server holds more jobs than the newest :data:`LIST_LIMIT` the list was given. */
  get hasMore(): boolean {
    return this._hasMore;
  }

  /** How many jobs the model knows but the list does not show (removed or cleared from it). */
  get hiddenCount(): number {
    return Object.keys(this._state.jobs).length - this.jobs.length;
  }

  /** The last failure to reach the server, for the user (``failureText``; null once it answers again). */
  get lastError(): string | null {
    return this._lastError;
  }

  /** Seconds between polls while the event stream is down. */
  get refreshInterval(): number {
    return this._refreshInterval;
  }
  set refreshInterval(seconds: number) {
    this._refreshInterval = Math.max(0.5, seconds);
    this._wake();
  }

  /** Follow the event stream (true) or only poll (false). */
  get liveUpdates(): boolean {
    return this._liveUpdates;
  }
  set liveUpdates(value: boolean) {
    if (value !== this._liveUpdates) {
      this._liveUpdates = value;
      if (this._started) {
        this._restart();
      }
    }
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  /** Load the hidden jobs and start following the server. */
  async start(): Promise<void> {
    if (this._started) {
      return;
    }
    this._started = true;
    if (this._stateDB) {
      try {
        const saved = await this._stateDB.fetch(HIDDEN_KEY);
        if (Array.isArray(saved)) {
          this.dispatch({ type: 'setHidden', ids: saved.filter(x => typeof x === 'string') as string[] });
        }
      } catch {
        // no saved state
      }
    }
    void this._run(this._generation);
  }

  dispatch(action: JobsAction): void {
    const next = reduceJobs(this._state, action);
    if (next !== this._state) {
      this._state = next;
      this._visible = null;
      this._changed.emit();
    }
  }

  /** ``GET /jobs`` into the list. */
  async refresh(): Promise<void> {
    try {
      const answer = await this.client.listJobs({ limit: LIST_LIMIT });
      this._setError(null);
      if (this._hasMore !== !!answer.next_cursor) {
        this._hasMore = !!answer.next_cursor;
        this._changed.emit();
      }
      this.dispatch({ type: 'jobs', jobs: answer.jobs });
    } catch (error) {
      this._setError(failureText(error));
      throw error;
    }
  }

  /** ``POST /jobs``; the answer may be an earlier job, ``up_to_date`` (no byte moved). */
  async create(request: CreateJobRequest): Promise<Job> {
    const job = await this.client.createJob(request);
    this.dispatch({ type: 'created', job });
    this._created.emit(job);
    return job;
  }

  async pause(id: string): Promise<void> {
    this.dispatch({ type: 'job', job: await this.client.pause(id) });
  }

  async resume(id: string): Promise<void> {
    this.dispatch({ type: 'job', job: await this.client.resume(id) });
  }

  async cancel(id: string): Promise<void> {
    await this.client.cancel(id);
    this.dispatch({ type: 'job', job: await this.client.getJob(id) });
  }

  /** Remove a job from the list; an unfinished one is cancelled first (its output is cleaned up). */
  async remove(id: string): Promise<void> {
    const job = this.job(id);
    if (job && !isFinal(job.state)) {
      await this.cancel(id);
    }
    this.dispatch({ type: 'hide', id });
    await this._saveHidden();
  }

  /**
   * "Clear finished": hide every succeeded, failed, cancelled or expired job from the list (the server
   * keeps its records and the staged files stay; ``DELETE /jobs/{id}`` of a finished job changes
   * nothing). Returns how many jobs were hidden.
   */
  async clearFinished(): Promise<number> {
    const ids = this.jobs.filter(job => isFinal(job.state)).map(job => job.id);
    this.dispatch({ type: 'hideMany', ids });
    await this._saveHidden();
    return ids.length;
  }

  /**
   * The Parquet datasets ``job`` produced (paths relative to the server root), read from all its chunks a
   * page of ``DATASET_PAGE`` at a time, so a dataset whose parts come after the first page is there too. A
   * succeeded job's output no longer changes: its datasets are fetched once and kept, and callers asking
   * while they are fetched share the fetch (the job view, the panel, a notification and the DataFrame
   * command ask for the same job). Rejects with the request's error (nothing is kept then).
   */
  datasets(job: Job): Promise<string[]> {
    const kept = this._datasets.get(job.id);
    if (kept) {
      return kept;
    }
    const fetched = this._readDatasets(job);
    if (job.state === 'succeeded') {
      this._datasets.set(job.id, fetched);
      fetched.then(
        found => {
          this._parquet.set(job.id, found);
          this._changed.emit();
        },
        () => this._datasets.delete(job.id)
      );
    }
    return fetched;
  }

  private async _readDatasets(job: Job): Promise<string[]> {
    const found = new Set<string>();
    let offset = 0;
    let read = 0;
    for (;;) {
      const page = await this.client.chunkPage(job.id, offset, DATASET_PAGE);
      parquetDatasets(job, page.chunks).forEach(path => found.add(path));
      read += page.chunks.length;
      // ``offset`` is an index and ``total`` a count: indexes may have gaps, so the chunks read (or a short
      // page) end the list, never an index reaching the total; nor an answer that would not move on.
      const after = page.chunks.length ? page.chunks[page.chunks.length - 1].index + 1 : offset;
      if (page.chunks.length < DATASET_PAGE || read >= page.total || !(after > offset)) {
        return [...found];
      }
      offset = after;
    }
  }

  /**
   * The Parquet datasets of a job in the list, for its DataFrame action: ``undefined`` until known, then
   * :meth:`datasets` (``changed`` fires when they arrive). Jobs without a conversion, or not succeeded, have
   * none.
   */
  parquetOf(job: Job): string[] | undefined {
    if (job.state !== 'succeeded' || !job.convert) {
      return [];
    }
    const known = this._parquet.get(job.id);
    if (known !== undefined || this._parquetPending.has(job.id)) {
      return known;
    }
    this._parquetPending.add(job.id);
    this._parquetQueue.push(job);
    this._nextParquet();
    return undefined;
  }

  /**
   * Start the fetches of :meth:`parquetOf` waiting in the queue, at most ``PARQUET_FETCHES`` at once: a list
   * of 200 succeeded conversions asked for 200 chunk lists at the same moment when the panel opened.
   */
  private _nextParquet(): void {
    while (this._parquetInFlight < PARQUET_FETCHES && this._parquetQueue.length) {
      const job = this._parquetQueue.shift()!;
      this._parquetInFlight += 1;
      this.datasets(job)
        .catch(() => undefined)
        .finally(() => {
          this._parquetPending.delete(job.id);
          this._parquetInFlight -= 1;
          this._nextParquet();
        });
    }
  }

  private async _saveHidden(): Promise<void> {
    if (this._stateDB) {
      await this._stateDB.save(HIDDEN_KEY, this._state.hidden.slice(-MAX_HIDDEN) as string[]);
    }
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this._restart();
    Signal.clearData(this);
  }

  // -- following the server ----------------------------------------------------------------------------

  private async _run(generation: number): Promise<void> {
    let backoff = 1000;
    await this.refresh().catch(() => undefined);
    while (this._current(generation)) {
      if (this._liveUpdates) {
        const connectedAt = Date.now();
        const wasLive = await this._follow(generation);
        if (wasLive && Date.now() - connectedAt > 10_000) {
          backoff = 1000;
        }
        if (!this._current(generation)) {
          return;
        }
      }
      this._setStatus('polling');
      const retryAt = this._liveUpdates ? Date.now() + backoff : Infinity;
      do {
        await this.refresh().catch(() => undefined);
        const wait = Math.min(this._refreshInterval * 1000, retryAt - Date.now());
        if (wait > 0) {
          await this._sleep(wait);
        }
      } while (this._current(generation) && Date.now() < retryAt);
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    }
  }

  /** Read the event stream until it ends or fails; true if it connected. */
  private async _follow(generation: number): Promise<boolean> {
    const abort = new AbortController();
    this._abort = abort;
    this._setStatus('connecting');
    let connected = false;
    let silence: ReturnType<typeof setTimeout> | undefined;
    const heard = () => {
      clearTimeout(silence);
      silence = setTimeout(() => abort.abort(), STREAM_SILENCE_MS);
    };
    heard();
    try {
      const response = await this.client.openEvents(abort.signal);
      heard();
      connected = true;
      this._setStatus('live');
      this._setError(null);
      // The stream opens with the unfinished jobs only: catch up on jobs that finished meanwhile.
      void this.refresh().catch(() => undefined);
      const reader = response.body!.getReader();
      abort.signal.addEventListener('abort', () => void reader.cancel().catch(() => undefined));
      const decoder = new TextDecoder();
      const parser = new EventStreamParser();
      while (this._current(generation)) {
        const { value, done } = await reader.read();
        if (done) {
          break;
        }
        heard();
        const jobs: Job[] = [];
        for (const event of parser.feed(decoder.decode(value, { stream: true }))) {
          const job = jobFromEvent(event);
          if (job) {
            jobs.push(job);
          }
        }
        if (jobs.length) {
          this.dispatch({ type: 'jobs', jobs });
        }
      }
      reader.cancel().catch(() => undefined);
    } catch (error) {
      if (!abort.signal.aborted && !connected) {
        this._setError(failureText(error));
      }
    } finally {
      clearTimeout(silence);
      abort.abort();
      if (this._abort === abort) {
        this._abort = null;
      }
    }
    return connected;
  }

  private _current(generation: number): boolean {
    return !this._disposed && generation === this._generation;
  }

  private _restart(): void {
    this._generation += 1;
    this._abort?.abort();
    this._wake();
    if (!this._disposed && this._started) {
      void this._run(this._generation);
    }
  }

  private _sleep(ms: number): Promise<void> {
    return new Promise(resolve => {
      const timer = setTimeout(done, ms);
      const wakers = this._wakers;
      function done() {
        clearTimeout(timer);
        wakers.delete(done);
        resolve();
      }
      wakers.add(done);
    });
  }

  private _wake(): void {
    for (const wake of [...this._wakers]) {
      wake();
    }
  }

  private _setStatus(status: ConnectionStatus): void {
    if (status !== this._status) {
      this._status = status;
      this._changed.emit();
    }
  }

  private _setError(message: string | null): void {
    if (message !== this._lastError) {
      this._lastError = message;
      this._changed.emit();
    }
  }

  private _state: JobsState = EMPTY_JOBS;
  private _visible: Job[] | null = null;
  private _status: ConnectionStatus = 'connecting';
  private _lastError: string | null = null;
  private _hasMore = false;
  private _refreshInterval = 3;
  private _liveUpdates = true;
  private _started = false;
  private _disposed = false;
  private _generation = 0;
  private _abort: AbortController | null = null;
  private _wakers = new Set<() => void>();
  /** The datasets of succeeded jobs, as fetched (:meth:`datasets`), and the fetches under way or done. */
  private _parquet = new Map<string, string[]>();
  private _datasets = new Map<string, Promise<string[]>>();
  private _parquetPending = new Set<string>();
  private _parquetQueue: Job[] = [];
  private _parquetInFlight = 0;
  private _stateDB: IStateDB | null;
  private _changed = new Signal<this, void>(this);
  private _created = new Signal<this, Job>(this);
}
