"""What every command that reads the configuration does first."""

from __future__ import annotations

from pathlib import Path

import structlog

from runwatch.config.loading import load_config
from runwatch.config.settings import Config
from runwatch.delivery.apprise_channel import route_apprise_logging
from runwatch.delivery.console import register_console_schema
from runwatch.logs import register_secrets

log = structlog.get_logger("runwatch.cli.startup")


def load(path: Path, *, need_secrets: bool = True) -> Config:
    """Load and validate; register secrets for redaction before anything else can log them.

    `need_secrets=False` for the commands that only read and change the state (status, runs,
    outbox, mute...): an operator who cannot read the service's credentials can run them.
    """
    register_console_schema()
    route_apprise_logging()
    config = load_config(path, need_secrets=need_secrets)
    register_secrets(config.secrets)
    for warning in config.warnings:
        log.warning("config.warning", message=warning)
    return config
