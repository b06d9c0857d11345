"""Load only the Apprise plugins that the configured URLs need.

Apprise's plugin manager (`apprise.manager_plugins.NotificationManager`, the process-wide
`N_MGR`) imports all of its ~217 plugin modules the first time anything asks it about a
schema: some 20 MiB and most of runwatch's start-up CPU, for a daemon that may send to one
`json://` URL. Its public `add(plugin)` registers a plugin class by its schemas; what it
lacks is a way to start empty. So, before the first URL is read, `need(url)` starts the
manager empty (its own "loaded, nothing mapped" state, written under its lock) and then
imports the one module of each schema asked for.

How it fails safe: a schema whose module cannot be found (a native `https://hooks...` URL,
which Apprise recognises by asking every plugin; a schema not in `_MODULES` whose module
is not named after it; a custom `@notify` schema registered by hand) makes the manager load
every plugin, exactly as Apprise does on its own: slower, never wrong. An Apprise whose
manager does not look as expected (another major version) is left to load everything.
"""

from __future__ import annotations

import importlib
import re
import threading
from typing import Any

# Schemas whose plugin module is not named after them. Any other schema is tried as
# `apprise.plugins.<schema>`; a miss loads every plugin.
_MODULES = {
    "json": "custom_json",
    "jsons": "custom_json",
    "form": "custom_form",
    "forms": "custom_form",
    "xml": "custom_xml",
    "xmls": "custom_xml",
    "mailto": "email",
    "mailtos": "email",
    "tgram": "telegram",
    "ntfys": "ntfy",
    "gotifys": "gotify",
    "pover": "pushover",
    "matrixs": "matrix",
    "mmost": "mattermost",
    "mmosts": "mattermost",
}
_SCHEMA = re.compile(r"\s*([a-z0-9]{1,32})://", re.IGNORECASE)  # Apprise's GET_SCHEMA_RE
_EMPTY_MARK = "runwatch:only-the-plugins-needed"  # stands in `_loaded` for "initialised"
_lock = threading.Lock()


def start_empty() -> None:
    """Start Apprise's plugin manager with no plugin loaded, unless it has started already
    (call before anything asks it about a schema: `@notify` registrations included)."""
    with _lock:
        _start_empty(_manager())


def need(url: str) -> None:
    """Make sure Apprise can read `url`: its plugin is loaded, or every plugin is."""
    manager = _manager()
    with _lock:
        _start_empty(manager)
        if _EMPTY_MARK not in manager._loaded:
            return  # Apprise loaded everything already (or this is not the manager we know)
        found = _SCHEMA.match(url)
        schema = found.group(1).lower() if found else None
        if schema is not None and (schema in manager or _load_one(manager, schema)):
            return
        manager.load_modules()  # what Apprise would have done: every plugin


def loaded_everything() -> bool:
    """Whether Apprise has imported all of its plugins (for tests and benchmarks)."""
    manager = _manager()
    return bool(manager.module_path in getattr(manager, "_loaded", ()))


def _manager() -> Any:
    import apprise.manager_plugins

    return apprise.manager_plugins.NotificationManager()  # type: ignore[no-untyped-call]


def _start_empty(manager: Any) -> None:
    if manager or not all(
        hasattr(manager, name)
        for name in ("_lock", "_loaded", "_module_map", "_schema_map", "_custom_module_map")
    ):
        return
    with manager._lock:
        # The state `load_modules` leaves behind, minus the plugins: maps initialised, a
        # path recorded as loaded (so nothing triggers the lazy load of all of them).
        manager._module_map = {}
        manager._schema_map = {}
        manager._custom_module_map = {}
        manager._loaded.add(_EMPTY_MARK)


def _load_one(manager: Any, schema: str) -> bool:
    """Import the plugin module of `schema` and register its plugin; False if not found."""
    name = _MODULES.get(schema, schema)
    if not re.fullmatch(r"[a-z0-9_]+", name):
        return False
    try:
        module = importlib.import_module(f"apprise.plugins.{name}")
    except ImportError:
        return False
    pattern = manager.module_filter_re  # Apprise's own rule for which class is the plugin
    for attribute in dir(module):
        plugin = getattr(module, attribute)
        if not pattern.match(attribute) or not hasattr(plugin, "app_id"):
            continue
        schemas = _schemas(plugin)
        if schema in schemas and not any(s in manager for s in schemas):
            return bool(manager.add(plugin))
    return False


def _schemas(plugin: Any) -> set[str]:
    found: set[str] = set()
    for value in (getattr(plugin, "protocol", None), getattr(plugin, "secure_protocol", None)):
        if isinstance(value, str):
            found.add(value.lower())
        elif isinstance(value, list | tuple | set):
            found.update(str(v).lower() for v in value)
    return found
