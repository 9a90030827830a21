/** The "Staging" sidebar: connection status, the "New staging job" form and the live job list. */
import { Clipboard, Dialog, ReactWidget, showDialog, UseSignal } from '@jupyterlab/apputils';
import { addIcon, clearIcon, refreshIcon, ToolbarButtonComponent } from '@jupyterlab/ui-components';
import type { CommandRegistry } from '@lumino/commands';
import * as React from 'react';

import { JobForm } from './components';
import type { JobFormValues } from './form';
import { stagingIcon } from './icons';
import { JobItem } from './jobitem';
import { LIST_LIMIT, type JobsModel } from './jobs';
import { buildStagingLink, linkOfJob, type LinkTarget } from './links';
import { isFinal, upToDateText, visibleText, type CreateJobRequest, type Job } from './model';

export const CommandIDs = {
  openPanel: 'staging:open-panel',
  newJob: 'staging:new-job',
  stageHere: 'staging:stage-here',
  refresh: 'staging:refresh',
  openJob: 'staging:open-job',
  openDataFrame: 'staging:open-dataframe'
} as const;

/** Defaults of the form, from the settings. */
export interface FormDefaults {
  destination: string;
  chunkRows: number;
  compression: JobFormValues['compression'];
}

export class StagingPanel extends ReactWidget {
  constructor(
    private readonly model: JobsModel,
    private readonly commands: CommandRegistry,
    private readonly formDefaults: () => FormDefaults,
    private readonly linkTarget: () => LinkTarget
  ) {
    super();
    this.id = 'jupyter-staging-panel';
    this.addClass('jp-Staging');
    this.title.icon = stagingIcon;
    this.title.caption = 'Staging: data staging jobs';
  }

  /** Show the form, aimed at ``initial.destination`` (default: the settings' default destination). */
  openForm(initial: Partial<JobFormValues> = {}): void {
    const defaults = this.formDefaults();
    this._form = {
      source: '',
      destination: defaults.destination,
      name: '',
      method: '',
      toParquet: false,
      chunkRows: defaults.chunkRows,
      compression: defaults.compression,
      ifExists: 'reuse',
      checksum: '',
      hdu: '',
      encoding: '',
      ...initial
    };
    this._formKey += 1;
    this.update();
  }

  closeForm(): void {
    this._form = null;
    this.update();
  }

  get formOpen(): boolean {
    return this._form !== null;
  }

  private async _submit(request: CreateJobRequest): Promise<void> {
    const job = await this.model.create(request);
    this._info = job.up_to_date ? upToDateText(job) : null;
    this.closeForm();
  }

  private async _act(job: Job, what: string, action: () => Promise<void>): Promise<void> {
    this._busy.add(job.id);
    this._notice = null;
    this.update();
    try {
      await action();
    } catch (error) {
      this._notice = visibleText(`Could not ${what} ${job.name}: ${(error as Error).message}`);
    } finally {
      this._busy.delete(job.id);
      this.update();
    }
  }

  /** "Copy link": a shareable staging link of ``job`` on the clipboard, and a note saying so. */
  private async _copyLink(job: Job): Promise<void> {
    const link = buildStagingLink(linkOfJob(job), this.linkTarget());
    try {
      await navigator.clipboard.writeText(link);
    } catch {
      Clipboard.copyToSystem(link); // no async clipboard (an insecure origin): the copy-event route
    }
    this._notice = null;
    this._copied = link;
    this.update();
  }

  private async _remove(job: Job): Promise<void> {
    if (!isFinal(job.state)) {
      const answer = await showDialog({
        title: 'Cancel and remove this job?',
        body:
          `${visibleText(job.name)} is ${job.state}. ` +
          'Removing it cancels it and cleans up its partial output.',
        buttons: [Dialog.cancelButton({ label: 'Keep it' }), Dialog.warnButton({ label: 'Cancel and remove' })]
      });
      if (!answer.button.accept) {
        return;
      }
    }
    await this._act(job, 'remove', () => this.model.remove(job.id));
  }

  protected render(): JSX.Element {
    return (
      <UseSignal signal={this.model.changed}>
        {() => (
          <>
            <div className="jp-Staging-header">
              <span className="jp-Staging-title">Staging</span>
              <span
                className={`jp-Staging-status jp-Staging-status-${this.model.status}`}
                title={
                  this.model.status === 'live'
                    ? 'Following the server’s event stream'
                    : this.model.status === 'polling'
                      ? `Event stream unavailable: refreshing every ${this.model.refreshInterval} s`
                      : 'Connecting…'
                }
              >
                {this.model.status}
              </span>
              <span className="jp-Staging-spacer" />
              <ToolbarButtonComponent
                icon={addIcon}
                tooltip="New staging job"
                className="jp-Staging-newButton"
                onClick={() => (this.formOpen ? this.closeForm() : this.openForm())}
              />
              <ToolbarButtonComponent
                icon={clearIcon}
                tooltip="Clear finished jobs from this list (their staged files stay)"
                className="jp-Staging-clearFinished"
                enabled={this.model.jobs.some(job => isFinal(job.state))}
                onClick={() => void this._clearFinished()}
              />
              <ToolbarButtonComponent
                icon={refreshIcon}
                tooltip="Refresh the job list"
                onClick={() => void this.commands.execute(CommandIDs.refresh)}
              />
            </div>
            {this._form && (
              <JobForm
                key={this._formKey}
                initial={this._form}
                onSubmit={request => this._submit(request)}
                onCancel={() => this.closeForm()}
              />
            )}
            {this.model.lastError && (
              <div className="jp-Staging-notice" role="status">
                {visibleText(this.model.lastError)}
              </div>
            )}
            {this._info && (
              <div className="jp-Staging-notice jp-Staging-upToDateNotice" role="status">
                {visibleText(this._info)}
                <button className="jp-Staging-dismiss" title="Dismiss" onClick={() => this._dismiss()}>
                  ×
                </button>
              </div>
            )}
            {this._copied && (
              <div className="jp-Staging-notice jp-Staging-linkNotice" role="status" title={this._copied}>
                Link copied: it opens this form prefilled; nothing starts until Stage is pressed.
                <button className="jp-Staging-dismiss" title="Dismiss" onClick={() => this._dismiss()}>
                  ×
                </button>
              </div>
            )}
            {this._notice && (
              <div className="jp-Staging-notice jp-mod-error" role="alert">
                {this._notice}
                <button className="jp-Staging-dismiss" title="Dismiss" onClick={() => this._dismiss()}>
                  ×
                </button>
              </div>
            )}
            {this.model.jobs.length === 0 && this.model.hiddenCount > 0 ? (
              <div className="jp-Staging-empty">
                No jobs to show: {this.model.hiddenCount} cleared from this list (their staged files stay).
              </div>
            ) : this.model.jobs.length === 0 ? (
              <div className="jp-Staging-empty">
                No staging jobs yet. Use <b>+</b> above, <b>Stage Here…</b> on a folder in the file browser,
                or <code>%stage</code> in a notebook.
              </div>
            ) : (
              <ul className="jp-Staging-jobs">
                {this.model.jobs.map(job => (
                  <JobItem
                    key={job.id}
                    job={job}
                    busy={this._busy.has(job.id)}
                    parquet={this.model.parquetOf(job)}
                    onOpen={j => void this.commands.execute(CommandIDs.openJob, { id: j.id })}
                    onPause={j => void this._act(j, 'pause', () => this.model.pause(j.id))}
                    onResume={j => void this._act(j, 'resume', () => this.model.resume(j.id))}
                    onCancel={j => void this._act(j, 'cancel', () => this.model.cancel(j.id))}
                    onRemove={j => void this._remove(j)}
                    onDataFrame={j => void this.commands.execute(CommandIDs.openDataFrame, { jobId: j.id })}
                    onCopyLink={j => void this._copyLink(j)}
                  />
                ))}
              </ul>
            )}
            {this.model.hasMore && (
              <div className="jp-Staging-empty jp-Staging-moreJobs" role="note">
                Only the {LIST_LIMIT} newest jobs are listed here; the server keeps the older ones.
              </div>
            )}
          </>
        )}
      </UseSignal>
    );
  }

  private async _clearFinished(): Promise<void> {
    try {
      await this.model.clearFinished();
    } catch (error) {
      this._notice = `Could not clear finished jobs: ${(error as Error).message}`;
      this.update();
    }
  }

  private _dismiss(): void {
    this._notice = null;
    this._info = null;
    this._copied = null;
    this.update();
  }

  private _form: JobFormValues | null = null;
  private _formKey = 0;
  private _busy = new Set<string>();
  private _notice: string | null = null;
  /** "Up to date: …" after a submission the server answered with unchanged output. */
  private _info: string | null = null;
  /** The link "Copy link" last put on the clipboard. */
  private _copied: string | null = null;
}
