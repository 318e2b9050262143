// temporal-healing React hooks for `healing serve` (React is a peer: your app's own copy).
//
//   import { useSelfHealing, useHealingProgress } from "./healing-hooks.js";
//   const { status, error, loading, decide } = useSelfHealing(id, { baseUrl, token });
//   const { events, connected } = useHealingProgress(id, { baseUrl });
//
// Without a bundler that resolves "react", import `createHealingHooks` from
// `healing-core.js` instead and pass it your React object.
import * as React from "react";

import { createHealingHooks } from "./healing-core.js";

export {
  createHealingHooks,
  eventsUrl,
  fetchEscalations,
  fetchStatus,
  HealingApiError,
  sendDecision,
  subscribe,
} from "./healing-core.js";

export const { useSelfHealing, useHealingProgress } = createHealingHooks(React);
