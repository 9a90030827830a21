/** The panel's icon and the state icons of jobs. */
import { LabIcon } from '@jupyterlab/ui-components';
import * as React from 'react';

import type { JobState } from './model';

const STAGING_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M11 3h2v9.17l3.59-3.58L18 10l-6 6-6-6 1.41-1.41L11 12.17z"/>
    <path d="M4 15h2v3h12v-3h2v5H4z"/>
    <circle cx="19" cy="4" r="1.3"/><circle cx="5" cy="6" r="1"/><circle cx="16" cy="2" r=".8"/>
  </g>
</svg>`;

/** The sidebar tab's icon: a download arrow into a tray, with a few stars. */
export const stagingIcon = new LabIcon({ name: 'jupyter-staging:staging', svgstr: STAGING_SVG });

const PATHS: Record<JobState, React.ReactNode> = {
  queued: (
    <>
      <circle cx="8" cy="8" r="6.5" fill="none" strokeWidth="1.5" />
      <path d="M8 4.5V8l2.5 1.5" fill="none" strokeWidth="1.5" strokeLinecap="round" />
    </>
  ),
  running: (
    <>
      <circle cx="8" cy="8" r="6.5" fill="none" strokeWidth="1.5" opacity="0.3" />
      <path d="M8 1.5A6.5 6.5 0 0 1 14.5 8" fill="none" strokeWidth="1.8" strokeLinecap="round" />
    </>
  ),
  paused: (
    <>
      <circle cx="8" cy="8" r="6.5" fill="none" strokeWidth="1.5" />
      <path d="M6.3 5v6M9.7 5v6" strokeWidth="1.6" strokeLinecap="round" />
    </>
  ),
  succeeded: (
    <>
      <circle cx="8" cy="8" r="6.5" fill="none" strokeWidth="1.5" />
      <path d="M5 8.2l2 2 4-4.2" fill="none" strokeWidth="1.7" strokeLinecap="round" strokeLinejoin="round" />
    </>
  ),
  failed: (
    <>
      <circle cx="8" cy="8" r="6.5" fill="none" strokeWidth="1.5" />
      <path d="M8 4.5v4.2" strokeWidth="1.7" strokeLinecap="round" />
      <circle cx="8" cy="11.2" r="0.9" stroke="none" className="jp-Staging-iconFill" />
    </>
  ),
  cancelled: (
    <>
      <circle cx="8" cy="8" r="6.5" fill="none" strokeWidth="1.5" />
      <path d="M3.6 12.4l8.8-8.8" strokeWidth="1.5" />
    </>
  ),
  expired: (
    <>
      <path d="M4 2h8M4 14h8M5 2c0 4 6 4 6 6s-6 2-6 6M11 2c0 4-6 4-6 6s6 2 6 6" fill="none" strokeWidth="1.3" />
    </>
  )
};

/** A 16 px icon for a job state, coloured by the ``jp-Staging-state-<state>`` CSS class. */
export function StateIcon(props: { state: JobState }): JSX.Element {
  return (
    <svg
      className={`jp-Staging-stateIcon jp-Staging-state-${props.state}`}
      width="16"
      height="16"
      viewBox="0 0 16 16"
      role="img"
      aria-label={props.state}
    >
      <title>{props.state}</title>
      {PATHS[props.state] ?? PATHS.queued}
    </svg>
  );
}
