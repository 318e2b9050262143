// temporal-healing: the browser side of `healing serve`, with no dependencies.
//
// React apps use `healing-hooks.js` (which imports React as a peer); this module has no
// imports at all: `createHealingHooks(React)` builds the same hooks from any object with
// React's useState/useEffect/useCallback/useRef (Preact's compat, a CDN global, a test fake),
// and the plain functions below serve pages without React (the inbox uses them).

/** The API's error: `status` is the HTTP status (401: token missing or wrong). */
export class HealingApiError extends Error {
  constructor(message, status) {
    super(message);
    this.name = "HealingApiError";
    this.status = status;
  }
}

function api(baseUrl, workflowId, what) {
  const base = (baseUrl || "").replace(/\/+$/, "");
  return `${base}/api/workflows/${encodeURIComponent(workflowId)}/${what}`;
}

/** URL of a workflow's SSE stream (`event: healing | status | end`). */
export function eventsUrl(workflowId, { baseUrl = "" } = {}) {
  return api(baseUrl, workflowId, "events");
}

async function readJson(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (!response.ok) {
    const message = (body && body.error) || `HTTP ${response.status}`;
    throw new HealingApiError(message, response.status);
  }
  return body;
}

/** GET JSON from the API; throws HealingApiError with the server's message. */
export async function getJson(url, { fetch: fetchImpl } = {}) {
  const doFetch = fetchImpl || globalThis.fetch.bind(globalThis);
  return readJson(await doFetch(url, { headers: { Accept: "application/json" } }));
}

/** The workflow's status: `{run_status, source, healing, escalation, problem, ...}`. */
export function fetchStatus(workflowId, { baseUrl = "", fetch } = {}) {
  return getJson(api(baseUrl, workflowId, "status"), { fetch });
}

/** Paused workflows, from visibility: `{count, escalations: [...]}`. */
export function fetchEscalations({ baseUrl = "", fetch } = {}) {
  const base = (baseUrl || "").replace(/\/+$/, "");
  return getJson(`${base}/api/escalations`, { fetch });
}

/**
 * Send a decision: `option` ("retry", "skip", "abort", "reroute", "edit_and_retry",
 * "reauthorized", "wait") and `extra` (`escalation_id`, `alternative`, `wait_s`,
 * `input_patch`, `note`, `decided_by`). `token` is HEALING_API_TOKEN (a string or a function
 * returning one). Resolves to the server's answer; throws HealingApiError (400: the workflow
 * refused it, 401: token, 409: already closed, 503/504: no worker).
 */
export async function sendDecision(workflowId, option, extra = {}, opts = {}) {
  const { baseUrl = "", token, fetch: fetchImpl } = opts;
  const doFetch = fetchImpl || globalThis.fetch.bind(globalThis);
  const secret = typeof token === "function" ? token() : token;
  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  if (secret) headers.Authorization = `Bearer ${secret}`;
  const body = JSON.stringify({ ...extra, option });
  const response = await doFetch(api(baseUrl, workflowId, "decision"), {
    method: "POST",
    headers,
    body,
  });
  return readJson(response);
}

/**
 * Follow a workflow's healing events. Handlers: onEvent(entry) for each healing entry in
 * order (duplicates after a reconnect are dropped), onStatus(status), onEnd(info),
 * onConnected(bool). Returns a function that stops following.
 */
export function subscribe(workflowId, handlers = {}, opts = {}) {
  const { baseUrl = "", EventSource: Impl } = opts;
  const Source = Impl || globalThis.EventSource;
  const source = new Source(eventsUrl(workflowId, { baseUrl }));
  let next = 0;
  const call = (name, value) => {
    if (typeof handlers[name] === "function") handlers[name](value);
  };
  source.onopen = () => call("onConnected", true);
  source.onerror = () => call("onConnected", false); // EventSource reconnects by itself
  source.addEventListener("healing", (msg) => {
    const entry = JSON.parse(msg.data);
    if (entry.index < next) return; // already seen (a resumed stream starts after it)
    next = entry.index + 1;
    call("onEvent", entry);
  });
  source.addEventListener("status", (msg) => call("onStatus", JSON.parse(msg.data)));
  source.addEventListener("end", (msg) => {
    source.close(); // the workflow closed: do not let EventSource reconnect
    call("onConnected", false);
    call("onEnd", JSON.parse(msg.data));
  });
  return () => source.close();
}

/** The hooks, over an injected React-like object. */
export function createHealingHooks(React) {
  const { useState, useEffect, useCallback, useRef } = React;

  /**
   * Poll a workflow's healing status. Returns `{status, error, loading, decide}`;
   * `decide(option, extra)` sends a decision (options.token: HEALING_API_TOKEN, a string or
   * function) and refreshes the status. Polling stops once the workflow has closed.
   */
  function useSelfHealing(workflowId, options = {}) {
    const { baseUrl = "", intervalMs = 2000 } = options;
    const [status, setStatus] = useState(null);
    const [error, setError] = useState(null);
    const [loading, setLoading] = useState(Boolean(workflowId));
    const [refresh, setRefresh] = useState(0);
    const latest = useRef(options);
    latest.current = options;

    useEffect(() => {
      if (!workflowId) return undefined;
      let stopped = false;
      let timer = null;
      const poll = async () => {
        let again = true;
        try {
          const body = await fetchStatus(workflowId, { baseUrl, fetch: latest.current.fetch });
          if (stopped) return;
          setStatus(body);
          setError(null);
          again = body.run_status === "RUNNING";
        } catch (err) {
          if (stopped) return;
          setError(err);
        }
        setLoading(false);
        if (again && !stopped) timer = setTimeout(poll, intervalMs);
      };
      setLoading(true);
      poll();
      return () => {
        stopped = true;
        if (timer !== null) clearTimeout(timer);
      };
    }, [workflowId, baseUrl, intervalMs, refresh]);

    const decide = useCallback(
      async (option, extra = {}) => {
        const { token, fetch } = latest.current;
        const answer = await sendDecision(workflowId, option, extra, { baseUrl, token, fetch });
        setRefresh((n) => n + 1);
        return answer;
      },
      [workflowId, baseUrl],
    );

    return { status, error, loading, decide };
  }

  /**
   * Follow a workflow's healing events live (SSE). Returns `{events, connected, status,
   * done}`: `events` in order, `status` the latest run/healing state, `done` once the
   * workflow has closed and the stream ended.
   */
  function useHealingProgress(workflowId, options = {}) {
    const { baseUrl = "", EventSource } = options;
    const [events, setEvents] = useState([]);
    const [connected, setConnected] = useState(false);
    const [status, setStatus] = useState(null);
    const [done, setDone] = useState(false);

    useEffect(() => {
      if (!workflowId) return undefined;
      setEvents([]);
      setDone(false);
      return subscribe(
        workflowId,
        {
          onEvent: (entry) => setEvents((prev) => [...prev, entry]),
          onStatus: setStatus,
          onConnected: setConnected,
          onEnd: (info) => {
            setStatus((prev) => ({ ...(prev || {}), ...info }));
            setDone(true);
          },
        },
        { baseUrl, EventSource },
      );
    }, [workflowId, baseUrl, EventSource]);

    return { events, connected, status, done };
  }

  return { useSelfHealing, useHealingProgress };
}
