"""The Temporal layer: one public interceptor over private per-hook modules.

Imports point one way: ``_interceptor`` (the public class) -> ``_activity_inbound`` ->
``_attempt`` / ``_ledger``, and ``_interceptor`` -> ``_workflow_inbound`` ->
``_workflow_outbound`` -> ``_state`` / ``_journal``. Each hook receives what it needs through
a narrow protocol, never the package itself.
"""

from healing.interceptor._interceptor import SelfHealingInterceptor

__all__ = ["SelfHealingInterceptor"]
