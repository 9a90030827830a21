/**
 * jupyter-staging: the JupyterLab face of jupyter_staging.
 *
 * A "Staging" sidebar with the live job list and the "New staging job" form; a main-area view per job
 * (chunks and log); file-browser actions ("Stage here…", "Open in notebook as DataFrame"); commands in the
 * palette; settings for the form's defaults and the refresh policy; notifications when a job started
 * here ends; shareable links (``lab?stage=<source>&dest=<folder>&to_parquet=1``) that open the form
 * prefilled.
 */
import {
  ILayoutRestorer,
  type JupyterFrontEnd,
  type JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget, Notification } from '@jupyterlab/apputils';
import { PageConfig, PathExt } from '@jupyterlab/coreutils';
import { IDefaultFileBrowser, IFileBrowserFactory, type FileBrowser } from '@jupyterlab/filebrowser';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStateDB } from '@jupyterlab/statedb';

import { StagingClient } from './api';
import { stagingIcon } from './icons';
import { JobsModel } from './jobs';
import { JobDetail } from './jobview';
import { parseStagingLink, withoutStagingLink, type StagingLink } from './links';
import { isParquetPath, visibleText, type Compression } from './model';
import { openAsDataFrame } from './notebook';
import { JobNotifier } from './notify';
import { CommandIDs, StagingPanel, type FormDefaults } from './panel';

const PLUGIN_ID = 'jupyter-staging:plugin';
const CATEGORY = 'Staging';

interface Settings extends FormDefaults {
  refreshInterval: number;
  liveUpdates: boolean;
  notifications: boolean;
}

const DEFAULTS: Settings = {
  destination: '',
  chunkRows: 100000,
  compression: 'zstd',
  refreshInterval: 3,
  liveUpdates: true,
  notifications: true
};

function readSettings(settings: ISettingRegistry.ISettings): Settings {
  const get = <T>(key: string, fallback: T): T => {
    const value = settings.get(key).composite;
    return value === undefined || value === null ? fallback : (value as T);
  };
  return {
    destination: get('defaultDestination', DEFAULTS.destination),
    chunkRows: get('chunkRows', DEFAULTS.chunkRows),
    compression: get<Compression>('compression', DEFAULTS.compression),
    refreshInterval: get('refreshInterval', DEFAULTS.refreshInterval),
    liveUpdates: get('liveUpdates', DEFAULTS.liveUpdates),
    notifications: get('notifications', DEFAULTS.notifications)
  };
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Staging jobs of jupyter_staging: live list, submit form, job logs, file-browser actions.',
  autoStart: true,
  optional: [
    ILayoutRestorer,
    ICommandPalette,
    ISettingRegistry,
    IDefaultFileBrowser,
    IFileBrowserFactory,
    INotebookTracker,
    IStateDB
  ],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    settingRegistry: ISettingRegistry | null,
    defaultBrowser: IDefaultFileBrowser | null,
    browserFactory: IFileBrowserFactory | null,
    notebooks: INotebookTracker | null,
    stateDB: IStateDB | null
  ) => {
    const { commands, shell } = app;
    const contents = app.serviceManager.contents;
    let settings: Settings = { ...DEFAULTS };
    // A shareable link's values, read now (JupyterLab keeps the query on /lab until it routes).
    const link = parseStagingLink(window.location.search);

    const model = new JobsModel({
      client: new StagingClient(app.serviceManager.serverSettings),
      state: stateDB
    });

    /** The file browser the user is looking at. */
    const browser = (): FileBrowser | null => browserFactory?.tracker.currentWidget ?? defaultBrowser ?? null;
    /** A file-browser path relative to the server root (no drive prefix). */
    const local = (path: string): string => contents.localPath(path);
    const currentFolder = (): string => {
      const b = browser();
      return b ? local(b.model.path) : '';
    };
    /** The file-browser item the context menu was opened on. */
    const selectedItem = () => {
      const b = browser();
      const item = b?.selectedItems().next();
      return item && !item.done ? item.value : null;
    };

    // An empty destination lets the server choose staging/<name>, as %stage does (Stage Here… aims the
    // form at a folder instead).
    const panel = new StagingPanel(
      model,
      commands,
      () => ({
        destination: settings.destination,
        chunkRows: settings.chunkRows,
        compression: settings.compression
      }),
      () => ({ baseUrl: PageConfig.getBaseUrl(), hubPrefix: PageConfig.getOption('hubPrefix') })
    );
    shell.add(panel, 'left', { rank: 750, type: 'Staging' });
    restorer?.add(panel, panel.id);

    new JobNotifier(
      model,
      commands,
      { goToPath: 'filebrowser:go-to-path', openDataFrame: CommandIDs.openDataFrame },
      () => settings.notifications
    );

    const detailViews = new Map<string, MainAreaWidget<JobDetail>>();

    commands.addCommand(CommandIDs.openPanel, {
      label: 'Open the Staging Panel',
      caption: 'Show the staging jobs',
      icon: stagingIcon,
      execute: () => shell.activateById(panel.id)
    });

    commands.addCommand(CommandIDs.newJob, {
      label: 'New Staging Job…',
      caption: 'Stage a file, folder, URL or s3:// object into the server, optionally as Parquet',
      icon: args => (args.isPalette ? undefined : stagingIcon),
      execute: args => {
        shell.activateById(panel.id);
        const initial: { destination?: string; source?: string } = {};
        if (typeof args.destination === 'string') {
          initial.destination = args.destination;
        }
        if (typeof args.source === 'string') {
          initial.source = args.source;
        }
        panel.openForm(initial);
      }
    });

    commands.addCommand(CommandIDs.stageHere, {
      label: 'Stage Here…',
      caption: 'New staging job into this folder',
      icon: stagingIcon,
      execute: () => {
        const item = selectedItem();
        const destination = item && item.type === 'directory' ? local(item.path) : currentFolder();
        return commands.execute(CommandIDs.newJob, { destination });
      }
    });

    commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh Staging Jobs',
      execute: () => model.refresh().catch(() => undefined)
    });

    commands.addCommand(CommandIDs.openJob, {
      label: args => (args.id ? 'Open Staging Job' : 'Open Staging Job (needs an id)'),
      execute: args => {
        const id = String(args.id ?? '');
        if (!id) {
          return;
        }
        let widget = detailViews.get(id);
        if (!widget || widget.isDisposed) {
          const content = new JobDetail(id, model, commands);
          widget = new MainAreaWidget({ content });
          widget.id = `jupyter-staging-job-${id}`;
          widget.title.label = `Staging: ${visibleText(model.job(id)?.name ?? id.slice(0, 8))}`;
          widget.title.icon = stagingIcon;
          widget.title.closable = true;
          detailViews.set(id, widget);
          widget.disposed.connect(() => detailViews.delete(id));
          shell.add(widget, 'main');
        }
        shell.activateById(widget.id);
        return widget;
      }
    });

    commands.addCommand(CommandIDs.openDataFrame, {
      label: 'Open in Notebook as DataFrame',
      caption: 'Insert a cell reading this Parquet dataset with pandas into the active notebook',
      isVisible: args => {
        if (args.path || args.jobId) {
          return true;
        }
        const item = selectedItem();
        return !!item && isParquetPath(item.path);
      },
      execute: async args => {
        let path = typeof args.path === 'string' ? args.path : '';
        let newNotebookDir = currentFolder();
        if (!path && typeof args.jobId === 'string') {
          // Asked afresh, not from the list: a job whose output was removed since it succeeded (its TTL,
          // or every chunk acknowledged under delete_on_ack) is ``expired``, with nothing left to read.
          const job = await model.client.getJob(args.jobId);
          if (job.state !== 'succeeded') {
            Notification.warning(
              `${visibleText(job.name)} is ${job.state}: its Parquet output is no longer there to read`,
              { autoClose: 8000 }
            );
            return;
          }
          const datasets = await model.datasets(job);
          if (!datasets.length) {
            throw new Error(`${job.name} has no Parquet output`);
          }
          path = datasets[0];
          newNotebookDir = job.destination;
        } else if (!path) {
          const item = selectedItem();
          if (!item) {
            return;
          }
          path = local(item.path);
        } else {
          newNotebookDir = PathExt.dirname(path);
        }
        // A part file inside a "<stem>.parquet" folder: a notebook beside the folder reads the same data.
        return openAsDataFrame(app, notebooks, path, newNotebookDir);
      }
    });

    app.contextMenu.addItem({
      command: CommandIDs.stageHere,
      selector: '.jp-DirListing-item[data-isdir="true"]',
      rank: 60
    });
    app.contextMenu.addItem({
      command: CommandIDs.openDataFrame,
      selector: '.jp-DirListing-item',
      rank: 61
    });

    if (palette) {
      for (const command of [CommandIDs.openPanel, CommandIDs.newJob, CommandIDs.refresh]) {
        palette.addItem({ command, category: CATEGORY, args: { isPalette: true } });
      }
    }

    const apply = (loaded: ISettingRegistry.ISettings) => {
      settings = readSettings(loaded);
      model.refreshInterval = settings.refreshInterval;
      model.liveUpdates = settings.liveUpdates;
    };
    const start = () => {
      void model.start();
      if (link) {
        openLink(link);
      }
    };
    /** The form prefilled from a shareable link; nothing is submitted until the user presses Stage. */
    const openLink = (values: StagingLink) => {
      shell.activateById(panel.id);
      // No ``dest`` in the link: the reader's own default destination (the settings') applies.
      const { destination, ...rest } = values;
      panel.openForm(destination ? values : rest);
      window.history.replaceState(window.history.state, '', withoutStagingLink(window.location.href));
    };
    if (settingRegistry) {
      Promise.all([settingRegistry.load(PLUGIN_ID), app.restored])
        .then(([loaded]) => {
          apply(loaded);
          loaded.changed.connect(apply);
        })
        .catch(reason => console.error('jupyter-staging: could not load settings', reason))
        .then(start);
    } else {
      void app.restored.then(start);
    }
  }
};

export default plugin;
