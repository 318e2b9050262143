"""The production worker: ``python worker.py``.

Environment: TEMPORAL_ADDRESS (default localhost:7233), TEMPORAL_NAMESPACE (default),
HEALING_TASK_QUEUE (integrations), HEALING_CONNECTORS (connector catalog TOML, default
connectors.toml), HEALING_STORE (default sqlite:///.healing/healing.db; also where the OAuth
credentials of every (connector, connection) live, shared by the fleet), HEALING_SECRET_KEY
(seals those tokens; checked against the stored rows at start-up; see ``healing credentials``),
HEALING_CREDENTIALS_FILE (a legacy credential file imported into the store at start-up),
HEALING_MAX_CACHED_WORKFLOWS (sticky cache size,
0 turns it off), HEALING_MAX_CONCURRENT_ACTIVITIES, HEALING_MAX_CONCURRENT_WORKFLOW_TASKS (unset:
the SDK's defaults). Every other HEALING_* knob is a HealingConfig field.

It registers IntegrationWorkflow and the generic ``call_integration`` activity with the
HealingPlugin (interceptor, healing activities, pydantic converter) and runs until Ctrl-C or
SIGTERM. ``healing worker`` runs the same function, ``healing.runner.run_worker``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from healing.client import check_address
from healing.errors import ConfigError, HealingError
from healing.runner import DEFAULT_ADDRESS, DEFAULT_NAMESPACE, run_worker


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    address = os.environ.get("TEMPORAL_ADDRESS") or DEFAULT_ADDRESS
    namespace = os.environ.get("TEMPORAL_NAMESPACE") or DEFAULT_NAMESPACE
    try:
        check_address(address)  # else the SDK's ValueError would be a traceback
    except ConfigError as exc:
        print(f"worker.py: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_worker(address, namespace))
    except HealingError as exc:
        print(f"worker.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    # Skip interpreter teardown: the Temporal client's Rust threads can abort it
    # (temporalio/sdk-python#300, "PyGILState_Release ... must be current").
    os._exit(code)
