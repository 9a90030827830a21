/**
 * JupyterLab notifications (Lab 4 ``Notification`` of ``@jupyterlab/apputils``) when a job started from
 * this browser ends: "Staged … into …" with "Open" (the folder in the file browser) and, for Parquet
 * output, "DataFrame"; "Staging … failed: <code>: <reason>" on failure. The jobs watched are kept in the
 * tab's ``sessionStorage``, so a reload still reports a job that ends later.
 */
import { Notification } from '@jupyterlab/apputils';
import type { CommandRegistry } from '@lumino/commands';

import { endingOf, takeEnded } from './endings';
import type { JobsModel } from './jobs';
import { isFinal, type Job, type JobState } from './model';

const WATCHED_KEY = 'jupyter-staging:watched-jobs';
const MAX_WATCHED = 500;

/** Commands the notifications' actions run. */
export interface NotifierCommands {
  /** Opens a folder in the file browser: ``{path: '/<folder>'}``. */
  goToPath: string;
  /** Inserts a cell reading a job's Parquet output: ``{jobId}``. */
  openDataFrame: string;
}

export class JobNotifier {
  /**
   * Watch the jobs ``model`` creates; ``enabled()`` is read when a job ends (the "Notifications" setting:
   * off, a job still leaves the watch list silently).
   */
  constructor(
    private readonly model: JobsModel,
    private readonly commands: CommandRegistry,
    private readonly ids: NotifierCommands,
    private readonly enabled: () => boolean
  ) {
    this._watched = loadWatched();
    model.created.connect((_sender, job) => this.watch(job));
    model.changed.connect(() => this._check());
  }

  /**
   * Watch ``job`` (the answer to ``POST /jobs``) until it ends; an answer that reused finished output has
   * nothing left to report. The job may already have ended: its runner starts as the answer is written,
   * and the event stream or a poll can bring its end before the answer arrives, so the model's state is
   * checked at once.
   */
  watch(job: Job): void {
    if (isFinal(job.state) || this._watched.has(job.id)) {
      return;
    }
    this._watched.set(job.id, job.state);
    saveWatched(this._watched);
    this._check();
  }

  private _check(): void {
    const ended = takeEnded(this._watched, this.model.state.jobs);
    if (!ended.length) {
      return;
    }
    saveWatched(this._watched);
    if (this.enabled()) {
      for (const job of ended) {
        void this._notify(job);
      }
    }
  }

  private async _notify(job: Job): Promise<void> {
    let parquet: string[] = [];
    if (job.state === 'succeeded' && job.convert) {
      try {
        parquet = await this.model.datasets(job);
      } catch {
        parquet = []; // no chunk list: the notification goes without its DataFrame action
      }
    }
    const ending = endingOf(job, parquet);
    if (!ending) {
      return;
    }
    const actions: Notification.IAction[] = [];
    if (ending.open) {
      actions.push({
        label: 'Open',
        caption: `Show ${job.destination || 'the server root'} in the file browser`,
        callback: () => void this.commands.execute(this.ids.goToPath, { path: `/${job.destination}` })
      });
    }
    if (ending.dataframe) {
      actions.push({
        label: 'DataFrame',
        caption: 'Insert a cell reading this Parquet dataset into the active notebook',
        callback: () => void this.commands.execute(this.ids.openDataFrame, { jobId: job.id })
      });
    }
    const options = { autoClose: ending.kind === 'success' ? 10_000 : (false as const), actions };
    if (ending.kind === 'success') {
      Notification.success(ending.message, options);
    } else {
      Notification.error(ending.message, options);
    }
  }

  private _watched: Map<string, JobState>;
}

function loadWatched(): Map<string, JobState> {
  try {
    const saved: unknown = JSON.parse(window.sessionStorage.getItem(WATCHED_KEY) ?? '{}');
    if (saved && typeof saved === 'object' && !Array.isArray(saved)) {
      return new Map(
        Object.entries(saved as Record<string, unknown>).filter(
          (entry): entry is [string, JobState] => typeof entry[1] === 'string'
        )
      );
    }
  } catch {
    // storage unavailable or unreadable: start with an empty watch list
  }
  return new Map();
}

function saveWatched(watched: Map<string, JobState>): void {
  try {
    const entries = [...watched].slice(-MAX_WATCHED);
    window.sessionStorage.setItem(WATCHED_KEY, JSON.stringify(Object.fromEntries(entries)));
  } catch {
    // storage full or unavailable: the watch list lives in memory only
  }
}
