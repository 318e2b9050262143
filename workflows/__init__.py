"""Integration workflows."""

from workflows.integration import IntegrationInput, IntegrationWorkflow, Step

__all__ = ["IntegrationInput", "IntegrationWorkflow", "Step"]
