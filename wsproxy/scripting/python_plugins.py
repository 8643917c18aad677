"""Python plugins: import a .py file by path, instantiate its ``Plugin`` subclasses.

The file is imported under a private module name (``wsproxy_plugin_<n>_<stem>``) so two
files with the same name, or a reload, never collide; only classes *defined* in the file
count (a ``from other import Base`` is not loaded twice). A file that fails to import, or a
class that fails to instantiate, raises ``PluginLoadError`` with the innermost line of the
plugin file in the traceback (a SyntaxError's own line), like a Lua syntax error.

Handlers are the methods marked ``@on``, in definition order (base classes first); the
chain gets one ``Subscription`` per (method, event).
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import os
import sys
import traceback
from types import MappingProxyType
from typing import Any, Mapping

from wsproxy.plugin import _MARK, Plugin
from wsproxy.scripting.errors import PluginLoadError
from wsproxy.scripting.hosts import DEFAULT_PRIORITY, ON_ERROR, Limits, LoadedPlugin, Subscription
from wsproxy.scripting.shared import SharedStore

__all__ = ["PythonPlugin", "load_python_plugins"]

_module_numbers = itertools.count(1)


class PythonPlugin(LoadedPlugin):
    """A ``Plugin`` instance and its handlers."""

    kind = "python"

    def __init__(self, instance: Plugin, *, path: str, on_error: str | None, listeners: tuple[str, ...] | None,
                 limits: Limits, index: int) -> None:
        cls = type(instance)
        name = getattr(instance, "name", "") or cls.__name__
        priority = getattr(instance, "priority", DEFAULT_PRIORITY)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 1000:
            raise PluginLoadError(path, _line_of(cls), f"{cls.__name__}.priority must be an integer 0..1000, got {priority!r}")
        policy = on_error or getattr(instance, "on_error", None) or "abort"
        if policy not in ON_ERROR:
            raise PluginLoadError(path, _line_of(cls), f"on_error must be abort, continue or disable, got {policy!r}")
        super().__init__(name=name, path=path, priority=priority, on_error=policy, listeners=listeners,
                         index=index, limits=limits)
        self.instance = instance
        order = 0
        for attr, fn in _marked_methods(cls):
            bound = getattr(instance, attr)
            for event, filt in getattr(fn, _MARK):
                self.subscriptions.append(Subscription(self, event, filt, bound, inspect.iscoroutinefunction(fn), order))
                order += 1
        if not self.subscriptions:
            raise PluginLoadError(path, _line_of(cls), f"{cls.__name__} has no @on(...) handlers")


def _marked_methods(cls: type) -> list[tuple[str, Any]]:
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            fn = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            if callable(fn) and getattr(fn, _MARK, None):
                found[attr] = fn  # an override keeps the base's position, takes the new function
            elif attr in found:
                del found[attr]  # overridden without @on: no longer a handler
    return list(found.items())


def _line_of(obj) -> int | None:
    try:
        return inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        return None


def _error_line(exc: BaseException, path: str) -> int | None:
    if isinstance(exc, SyntaxError) and exc.filename and os.path.abspath(exc.filename) == os.path.abspath(path):
        return exc.lineno
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if os.path.abspath(frame.filename) == os.path.abspath(path):
            line = frame.lineno
    return line


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg}"
    return f"{type(exc).__name__}: {exc}"


def load_python_plugins(path: str, *, options: Mapping[str, Any] | None = None, on_error: str | None = None,
                        listeners: tuple[str, ...] | None = None, limits: Limits | None = None,
                        shared: SharedStore | None = None, index: int = 0) -> list[PythonPlugin]:
    """Import ``path`` and return one PythonPlugin per Plugin subclass defined in it."""
    stem = os.path.splitext(os.path.basename(path))[0]
    module_name = f"wsproxy_plugin_{next(_module_numbers)}_{''.join(c if c.isalnum() else '_' for c in stem)}"
    if not os.path.isfile(path):
        raise PluginLoadError(path, None, "cannot read the plugin file: no such file")
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginLoadError(path, None, "not importable as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look a module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise PluginLoadError(path, _error_line(exc, path), _describe(exc)) from exc
    classes = [obj for obj in vars(module).values()
               if isinstance(obj, type) and issubclass(obj, Plugin) and obj is not Plugin
               and obj.__module__ == module_name and not inspect.isabstract(obj)]
    if not classes:
        raise PluginLoadError(path, None, "defines no Plugin subclass (class X(Plugin) with @on(...) handlers)")
    store = shared if shared is not None else SharedStore()
    frozen_options = MappingProxyType(dict(options or {}))
    plugins = []
    for cls in classes:
        try:
            instance = cls()
            plugin = PythonPlugin(instance, path=path, on_error=on_error, listeners=listeners,
                                  limits=limits or Limits(), index=index)
            instance.name = plugin.name
            instance.options = frozen_options
            instance.log = plugin.log
            instance.metric = plugin.metric
            instance.shared = store
            instance.setup()
        except PluginLoadError:
            raise
        except Exception as exc:
            raise PluginLoadError(path, _error_line(exc, path), f"{cls.__name__}: {_describe(exc)}") from exc
        plugins.append(plugin)
    return plugins
