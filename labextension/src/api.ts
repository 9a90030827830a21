/**
 * The staging REST API (``<base_url>api/v1/staging``) through ``ServerConnection.makeRequest``, so the
 * server's token, XSRF cookie and base URL apply exactly as for JupyterLab's own requests.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import type { Chunk, CreateJobRequest, Job, JobState, ListJobsResponse, LogLine } from './model';

/** A page of a job's chunks and how many the job has. */
export interface ChunkPage {
  chunks: Chunk[];
  total: number;
}

export const API_PREFIX = 'api/v1/staging';

/** A refusal or failure of the staging API, carrying the server's ``message`` and stable ``code``. */
export class StagingAPIError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
    readonly reason = ''
  ) {
    super(message);
    this.name = 'StagingAPIError';
  }
}

/**
 * Call ``endPoint`` (relative to ``api/v1/staging``) and return its JSON (undefined for 204).
 *
 * Throws :class:`StagingAPIError` with the server's ``message`` and ``code`` when it answers with an
 * error, or with code ``network_error`` when it cannot be reached.
 */
export async function requestAPI<T>(
  endPoint = '',
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const url = URLExt.join(settings.baseUrl, API_PREFIX, endPoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new StagingAPIError(
      `cannot reach the Jupyter server: ${(error as Error).message ?? error}`,
      0,
      'network_error'
    );
  }
  if (response.status === 204) {
    return undefined as T;
  }
  const text = await response.text();
  let data: any = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const message =
      (data && typeof data.message === 'string' && data.message) ||
      (data && typeof data.reason === 'string' && data.reason) ||
      response.statusText ||
      `HTTP ${response.status}`;
    throw new StagingAPIError(message, response.status, (data && data.code) || 'error', data?.reason ?? '');
  }
  return data as T;
}

const JSON_HEADERS = { 'Content-Type': 'application/json' };

/** The endpoints the panel uses. */
export class StagingClient {
  constructor(readonly settings: ServerConnection.ISettings = ServerConnection.makeSettings()) {}

  listJobs(options: { state?: JobState; limit?: number } = {}): Promise<ListJobsResponse> {
    const query = new URLSearchParams();
    if (options.state) {
      query.set('state', options.state);
    }
    query.set('limit', String(options.limit ?? 200));
    return requestAPI<ListJobsResponse>(`jobs?${query}`, {}, this.settings);
  }

  getJob(id: string): Promise<Job> {
    return requestAPI<Job>(`jobs/${encodeURIComponent(id)}`, {}, this.settings);
  }

  createJob(request: CreateJobRequest): Promise<Job> {
    return requestAPI<Job>(
      'jobs',
      { method: 'POST', body: JSON.stringify(request), headers: JSON_HEADERS },
      this.settings
    );
  }

  pause(id: string): Promise<Job> {
    return requestAPI<Job>(`jobs/${encodeURIComponent(id)}/pause`, { method: 'POST' }, this.settings);
  }

  resume(id: string): Promise<Job> {
    return requestAPI<Job>(`jobs/${encodeURIComponent(id)}/resume`, { method: 'POST' }, this.settings);
  }

  /** ``DELETE /jobs/{id}``: cancels an unfinished job (a no-op for a finished one). */
  cancel(id: string): Promise<void> {
    return requestAPI<void>(`jobs/${encodeURIComponent(id)}`, { method: 'DELETE' }, this.settings);
  }

  /**
   * ``GET /jobs/{id}/chunks?offset&limit``: the job's chunks of index >= ``offset`` in index order, at
   * most ``limit`` (<= 10,000), and ``total``, how many chunks the job has. A server of an earlier release
   * answers every chunk and no total: the page is then cut here and ``total`` is their count.
   */
  async chunkPage(id: string, offset: number, limit: number): Promise<ChunkPage> {
    const data = await requestAPI<{ chunks: Chunk[]; total?: number }>(
      `jobs/${encodeURIComponent(id)}/chunks?offset=${offset}&limit=${limit}`,
      {},
      this.settings
    );
    if (typeof data.total === 'number') {
      return { chunks: data.chunks, total: data.total };
    }
    const from = data.chunks.filter(c => c.index >= offset);
    return { chunks: from.slice(0, limit), total: data.chunks.length };
  }

  async log(id: string): Promise<LogLine[]> {
    const data = await requestAPI<{ lines: LogLine[] }>(
      `jobs/${encodeURIComponent(id)}/log`,
      {},
      this.settings
    );
    return data.lines;
  }

  /**
   * Open ``GET /events`` as a streaming response (its ``body`` yields the ``text/event-stream``).
   * Throws :class:`StagingAPIError` when the server refuses.
   */
  async openEvents(signal: AbortSignal): Promise<Response> {
    const url = URLExt.join(this.settings.baseUrl, API_PREFIX, 'events');
    const response = await ServerConnection.makeRequest(
      url,
      { signal, headers: { Accept: 'text/event-stream' }, cache: 'no-store' },
      this.settings
    );
    if (!response.ok || !response.body) {
      let message = response.statusText || `HTTP ${response.status}`;
      let code = 'error';
      try {
        const data = await response.json();
        message = data.message || message;
        code = data.code || code;
      } catch {
        // not JSON: keep the status text
      }
      throw new StagingAPIError(message, response.status, code);
    }
    return response;
  }
}
