"""Apprise loads only the plugins the configured URLs need, and every plugin when it cannot
tell which one a URL needs. Apprise's plugin manager is process-wide, so each check runs
in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

PROBE = textwrap.dedent(
    """
    import json, sys
    from runwatch.config.apprise_urls import load_service, url_problem
    from runwatch.config.apprise_plugins import loaded_everything
    from runwatch.delivery.console import register_console_schema

    def plugins():
        return sorted(m for m in sys.modules if m.startswith("apprise.plugins."))

    out = {}
    register_console_schema()
    out["after_console"] = loaded_everything()
    for step, url in enumerate(sys.argv[1:]):
        try:
            service = load_service(url)
            out[f"{step}"] = {"url": service.url(privacy=True)}
        except ValueError as exc:
            out[f"{step}"] = {"error": str(exc)}
        out[f"{step}"]["everything"] = loaded_everything()
        out[f"{step}"]["plugins"] = len(plugins())
    print(json.dumps(out))
    """
)


def probe(*urls: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *urls], capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_it_loads_only_the_plugins_of_the_configured_schemas() -> None:
    """json:// and mailto:// load their own modules, not Apprise's ~217."""
    out = probe("json://127.0.0.1:9/hook", "mailto://127.0.0.1:25?from=a@example.com&to=b@x.io")

    assert out["after_console"] is False
    assert out["0"]["url"].startswith("json://127.0.0.1:9/hook")
    assert out["1"]["url"].startswith("mailto://127.0.0.1")
    assert out["1"]["everything"] is False
    assert out["1"]["plugins"] < 20


def test_it_loads_every_plugin_for_a_native_service_url() -> None:
    """A Slack webhook given as its https:// address is recognised, as Apprise recognises it:
    by asking every plugin."""
    out = probe(
        "json://127.0.0.1:9/hook",
        "https://hooks.slack.com/services/T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ",
    )

    assert out["0"]["everything"] is False
    assert out["1"]["everything"] is True
    assert out["1"]["url"].startswith("slack://")


def test_it_reports_an_unknown_schema_as_before() -> None:
    """A schema no plugin claims is refused with the same message as with every plugin."""
    out = probe("slak://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ")

    assert out["0"]["error"] == "Apprise cannot use slak://…: unknown service or malformed URL"
    assert out["0"]["everything"] is True
