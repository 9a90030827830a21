/** A job opened in the main area: its summary, chunks and log, refreshed while it runs. */
import { ReactWidget, UseSignal } from '@jupyterlab/apputils';
import { infoIcon } from '@jupyterlab/ui-components';
import type { CommandRegistry } from '@lumino/commands';
import type { Message } from '@lumino/messaging';
import * as React from 'react';

import { ChunkTable, MAX_CHUNK_ROWS } from './components';
import { displayFolder, ProgressBar, TasksLine } from './jobitem';
import { StateIcon } from './icons';
import type { JobsModel } from './jobs';
import {
  actionsFor,
  chunkCount,
  formatCount,
  humanizeLogMessage,
  isFinal,
  jobNotices,
  parquetDatasets,
  progressSummary,
  tasksSummary,
  taskWorkerLines,
  visibleText,
  type Chunk,
  type Job,
  type LogLine
} from './model';
import { CommandIDs } from './panel';

function time(iso: string | null | undefined): string {
  if (!iso) {
    return '';
  }
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

function clock(iso: string): string {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleTimeString(undefined, { hour12: false });
}

export class JobDetail extends ReactWidget {
  constructor(
    readonly jobId: string,
    private readonly model: JobsModel,
    private readonly commands: CommandRegistry
  ) {
    super();
    this.addClass('jp-Staging-detail');
    this.model.changed.connect(this._onModelChanged, this);
  }

  /**
   * Fetch the job, the chunks the table shows (the first ``MAX_CHUNK_ROWS``, with the job's total: never
   * its whole list, megabytes for 20,000 chunks) and its log now. The chunks of a job with more than the
   * table shows are fetched again only when its state changed: the first rows barely change while it runs.
   */
  async refresh(): Promise<void> {
    if (this._loading) {
      return;
    }
    this._loading = true;
    const known = this.model.job(this.jobId)?.state;
    const wantChunks =
      this._chunksTotal <= MAX_CHUNK_ROWS || known === undefined || known !== this._chunksState;
    try {
      const [job, chunks, log] = await Promise.all([
        this.model.client.getJob(this.jobId),
        wantChunks ? this.model.client.chunkPage(this.jobId, 0, MAX_CHUNK_ROWS) : Promise.resolve(null),
        this.model.client.log(this.jobId)
      ]);
      this.model.dispatch({ type: 'job', job });
      if (chunks) {
        this._chunks = chunks.chunks;
        this._chunksTotal = chunks.total;
        this._chunksState = job.state;
      }
      this._log = log;
      this._error = null;
      this._fetchedState = job.state;
    } catch (error) {
      this._error = (error as Error).message;
      // No such job (a removed one, a stale link): asking again every refresh would only repeat that.
      this._gone = (error as { status?: unknown }).status === 404;
    } finally {
      this._loading = false;
      this.update();
      this._schedule();
    }
  }

  dispose(): void {
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    this.model.changed.disconnect(this._onModelChanged, this);
    super.dispose();
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    void this.refresh();
  }

  protected onUpdateRequest(msg: Message): void {
    super.onUpdateRequest(msg);
    // Follow the log's tail unless the reader scrolled up.
    requestAnimationFrame(() => {
      const node = this.node.querySelector('.jp-Staging-log');
      if (node && this._stickToBottom) {
        node.scrollTop = node.scrollHeight;
      }
    });
  }

  private _schedule(): void {
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    const job = this.model.job(this.jobId);
    if (this.isDisposed || this._gone || (job && isFinal(job.state) && this._fetchedState === job.state)) {
      return;
    }
    this._timer = window.setTimeout(() => {
      this._timer = null;
      void this.refresh();
    }, this.model.refreshInterval * 1000);
  }

  private _onModelChanged(): void {
    const job = this.model.job(this.jobId);
    if (job) {
      this.title.label = `Staging: ${visibleText(job.name)}`;
      // A state change (e.g. the job finished) is worth an immediate fetch of chunks and log.
      if (job.state !== this._fetchedState && !this._loading) {
        void this.refresh();
      }
    }
  }

  protected render(): JSX.Element {
    return (
      <UseSignal signal={this.model.changed}>
        {() => {
          const job = this.model.job(this.jobId);
          if (!job) {
            return <div className="jp-Staging-empty">{this._error ?? 'Loading…'}</div>;
          }
          return this._renderJob(job);
        }}
      </UseSignal>
    );
  }

  private _renderJob(job: Job): JSX.Element {
    const actions = actionsFor(job.state);
    // A conversion's datasets come from all its chunks (the model reads them once, a page at a time): the
    // table's first page holds only the datasets among its first chunks. Until they arrive, and for a job
    // that copied Parquet files, those of the first page.
    const all = job.convert ? this.model.parquetOf(job) : undefined;
    const datasets = job.state === 'succeeded' ? (all ?? parquetDatasets(job, this._chunks)) : [];
    // Running tasks by worker (host:port), for a running job on a distributed executor.
    const workers = tasksSummary(job) ? taskWorkerLines(job.progress.tasks) : [];
    // One action at a time: the buttons are disabled while its request runs (a double click sent two).
    const act = (what: () => Promise<void>) => () => {
      if (this._acting) {
        return;
      }
      this._acting = true;
      this.update();
      void what()
        .catch(error => {
          this._error = (error as Error).message;
        })
        .finally(() => {
          this._acting = false;
          this.update();
        });
    };
    return (
      <div className="jp-Staging-detailBody" data-job-id={job.id} data-state={job.state}>
        <div className="jp-Staging-detailHead">
          <StateIcon state={job.state} />
          <h2>{visibleText(job.name)}</h2>
          <span className={`jp-Staging-stateLabel jp-Staging-state-${job.state}`}>{job.state}</span>
          <span className="jp-Staging-spacer" />
          {actions.pause && (
            <button
              className="jp-Staging-button"
              disabled={this._acting}
              onClick={act(() => this.model.pause(job.id))}
            >
              Pause
            </button>
          )}
          {actions.resume && (
            <button
              className="jp-Staging-button"
              disabled={this._acting}
              onClick={act(() => this.model.resume(job.id))}
            >
              Resume
            </button>
          )}
          {actions.cancel && (
            <button
              className="jp-Staging-button jp-mod-warn"
              disabled={this._acting}
              onClick={act(() => this.model.cancel(job.id))}
            >
              Cancel
            </button>
          )}
          {datasets.map(path => (
            <button
              key={path}
              className="jp-Staging-button jp-mod-accept"
              title={`Insert a cell reading ${visibleText(path)} into the active notebook`}
              onClick={() => void this.commands.execute(CommandIDs.openDataFrame, { path })}
            >
              Open in notebook as DataFrame
            </button>
          ))}
        </div>
        <ProgressBar job={job} />
        <div className="jp-Staging-numbers">
          <span className="jp-Staging-summary">{progressSummary(job)}</span>
          <span className="jp-Staging-chunkCount">{chunkCount(job.progress)}</span>
        </div>
        <TasksLine job={job} done />
        {job.error && (
          <div className="jp-Staging-error jp-Staging-errorFull" role="alert">
            <span className="jp-Staging-errorCode">{job.error.code}</span>
            <span className="jp-Staging-errorMessage">{visibleText(job.error.message)}</span>
          </div>
        )}
        {jobNotices(job).map(visibleText).map(notice => (
          <div key={notice} className="jp-Staging-noticeLine" role="note">
            <infoIcon.react tag="span" elementSize="small" className="jp-Staging-noticeIcon" />
            <span className="jp-Staging-noticeText">{notice}</span>
          </div>
        ))}
        {this._error && <div className="jp-Staging-notice jp-mod-error">{visibleText(this._error)}</div>}
        <dl className="jp-Staging-facts">
          <dt>source</dt>
          <dd>{visibleText(job.source)}</dd>
          <dt>destination</dt>
          <dd>{visibleText(displayFolder(job.destination))}</dd>
          <dt>method</dt>
          <dd>
            {job.method}
            {job.convert &&
              ` → Parquet, ${formatCount(job.convert.chunk_rows)} rows per chunk, ` +
                job.convert.compression +
                (job.convert.hdu !== null && job.convert.hdu !== undefined ? `, HDU ${job.convert.hdu}` : '') +
                (job.convert.encoding ? `, text in ${job.convert.encoding}` : '')}
          </dd>
          {workers.length > 0 && (
            <>
              <dt>workers</dt>
              <dd className="jp-Staging-workers">
                {workers.map(line => (
                  <div key={line}>{line}</div>
                ))}
              </dd>
            </>
          )}
          <dt>created</dt>
          <dd>{time(job.created_at)}</dd>
          {job.started_at && (
            <>
              <dt>started</dt>
              <dd>{time(job.started_at)}</dd>
            </>
          )}
          {job.finished_at && (
            <>
              <dt>finished</dt>
              <dd>{time(job.finished_at)}</dd>
            </>
          )}
          <dt>id</dt>
          <dd className="jp-Staging-id">{job.id}</dd>
        </dl>
        <h3>Chunks ({formatCount(this._chunksTotal)})</h3>
        <ChunkTable chunks={this._chunks} total={this._chunksTotal} />
        <h3>Log</h3>
        <div
          className="jp-Staging-log"
          onScroll={e => {
            const el = e.currentTarget;
            this._stickToBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 24;
          }}
        >
          {this._log.length === 0 ? (
            <div className="jp-Staging-empty">No log lines yet.</div>
          ) : (
            this._log.map((line, i) => (
              <div key={i} className={`jp-Staging-logLine jp-Staging-log-${line.level.toLowerCase()}`}>
                <span className="jp-Staging-logTime">{clock(line.time)}</span>
                <span className="jp-Staging-logLevel">{line.level}</span>
                <span className="jp-Staging-logMessage">{visibleText(humanizeLogMessage(line.message))}</span>
              </div>
            ))
          )}
        </div>
      </div>
    );
  }

  /** The first chunks (the table's rows) and how many the job has. */
  private _chunks: Chunk[] = [];
  private _chunksTotal = 0;
  private _log: LogLine[] = [];
  private _error: string | null = null;
  private _loading = false;
  private _acting = false;
  /** The server answered 404 for the job: the view stops refreshing. */
  private _gone = false;
  private _fetchedState: string | null = null;
  /** The job's state when its chunks were last fetched. */
  private _chunksState: string | null = null;
  private _timer: number | null = null;
  private _stickToBottom = true;
}
