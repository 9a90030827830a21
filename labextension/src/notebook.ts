/**
 * "Open in notebook as DataFrame": a code cell reading a staged Parquet dataset with pandas, in the
 * active notebook (or a new one), with the path written relative to the notebook (its kernel's cwd).
 */
import type { JupyterFrontEnd } from '@jupyterlab/application';
import { PathExt } from '@jupyterlab/coreutils';
import { NotebookActions, type INotebookTracker, type NotebookPanel } from '@jupyterlab/notebook';

import { dataframeCellSource, relativePath } from './model';

/**
 * Insert the cell reading ``path`` (relative to the server root) into the active notebook, or into a new
 * notebook created in ``newNotebookDir``; returns the notebook it went into. The cell is selected, not run.
 */
export async function openAsDataFrame(
  app: JupyterFrontEnd,
  tracker: INotebookTracker | null,
  path: string,
  newNotebookDir: string
): Promise<NotebookPanel> {
  let panel = tracker?.currentWidget ?? null;
  if (!panel || panel.isDisposed) {
    // Name the default kernel, so no "Select Kernel" dialog stands between the user and the cell.
    const specs = app.serviceManager.kernelspecs;
    await specs.ready;
    const kernelName = specs.specs?.default;
    panel = (await app.commands.execute('notebook:create-new', {
      cwd: newNotebookDir,
      ...(kernelName ? { kernelName } : {})
    })) as NotebookPanel;
  }
  await panel.context.ready;
  const notebook = panel.content;
  const source = dataframeCellSource(relativePath(PathExt.dirname(panel.context.path), path));

  const active = notebook.activeCell;
  const reuse = active && active.model.type === 'code' && active.model.sharedModel.getSource().trim() === '';
  if (!reuse) {
    if (notebook.widgets.length === 0) {
      NotebookActions.insertAbove(notebook);
    } else {
      NotebookActions.insertBelow(notebook);
    }
    if (notebook.activeCell && notebook.activeCell.model.type !== 'code') {
      NotebookActions.changeCellType(notebook, 'code');
    }
  }
  notebook.activeCell!.model.sharedModel.setSource(source);
  app.shell.activateById(panel.id);
  notebook.mode = 'command';
  if (notebook.activeCell) {
    void notebook.scrollToItem(notebook.activeCellIndex);
  }
  return panel;
}
