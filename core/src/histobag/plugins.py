"""The plugin manager: loads the ``histobag`` entry points once, lazily, and collects specs.

Packs are found through ``importlib.metadata`` entry points in the group ``histobag``. A pack
that fails to import is reported (which distribution, which error) and the others still load.
Scripts can register extractors in-process with :func:`register_plugin` or
:func:`register_extractor`.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, TypeVar

import pluggy

from histobag import builtin, hookspecs
from histobag._version import __version__
from histobag.errors import DuplicateExtractorError, PluginError
from histobag.specs import ExtractorSpec

GROUP = "histobag"
IN_PROCESS = "<in-process>"

T = TypeVar("T")


class PluginImportWarning(UserWarning):
    """An installed pack could not be imported; its extractors are unavailable."""


@dataclass(frozen=True)
class PluginFailure:
    """An installed pack that failed to load."""

    distribution: str
    entry_point: str
    error: str

    def __str__(self) -> str:
        return (
            f"histobag pack {self.distribution!r} (entry point {self.entry_point}) failed to "
            f"load: {self.error}. Its extractors are unavailable; reinstall it or its "
            "dependencies."
        )


@dataclass(frozen=True)
class _Provider:
    distribution: str
    version: str


class _State:
    """Process-wide plugin state, created on first use."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.manager: pluggy.PluginManager | None = None
        self.providers: dict[int, _Provider] = {}
        self.failures: list[PluginFailure] = []
        self.cache: dict[str, Any] = {}


_state = _State()


def _new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    manager.register(builtin, name="histobag.builtin")
    _state.providers[id(builtin)] = _Provider("histobag", __version__)
    for ep in entry_points(group=GROUP):
        dist = ep.dist.name if ep.dist else ep.value
        version = ep.dist.version if ep.dist else ""
        try:
            plugin = ep.load()
            manager.register(plugin, name=f"{dist}:{ep.name}")
        except Exception as exc:  # a broken pack must not take the others down
            failure = PluginFailure(dist, f"{ep.name} = {ep.value}", f"{type(exc).__name__}: {exc}")
            _state.failures.append(failure)
            warnings.warn(str(failure), PluginImportWarning, stacklevel=3)
            continue
        _state.providers[id(plugin)] = _Provider(dist, version)
    return manager


def get_plugin_manager() -> pluggy.PluginManager:
    """The process's plugin manager, loading installed packs on first call."""
    with _state.lock:
        if _state.manager is None:
            _state.manager = _new_manager()
        return _state.manager


def plugin_failures() -> list[PluginFailure]:
    """Packs that are installed but failed to import in this process."""
    get_plugin_manager()
    return list(_state.failures)


def register_plugin(plugin: object, name: str | None = None) -> object:
    """Register a module or object implementing histobag hooks, without packaging it.

    Useful in scripts and notebooks. Returns ``plugin`` so it can be used as a decorator on a
    class. Its extractors show as provided by ``"<in-process>"``.
    """
    with _state.lock:
        manager = get_plugin_manager()
        manager.register(plugin, name=name)
        _state.providers[id(plugin)] = _Provider(IN_PROCESS, "")
        _state.cache.clear()
    return plugin


def unregister_plugin(plugin: object) -> None:
    """Undo :func:`register_plugin`."""
    with _state.lock:
        get_plugin_manager().unregister(plugin)
        _state.providers.pop(id(plugin), None)
        _state.cache.clear()


class _ExtractorPlugin:
    """In-process plugin holding a single spec (made by :func:`register_extractor`)."""

    def __init__(self, spec: ExtractorSpec) -> None:
        self.spec = spec

    @hookspecs.hookimpl
    def histobag_extractors(self) -> list[ExtractorSpec]:
        return [self.spec]


def register_extractor(**spec_fields: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator registering a factory function as an extractor, in-process.

    The keyword arguments are :class:`ExtractorSpec` fields (``name`` and ``license`` at
    least); the decorated function becomes the factory. Example::

        @histobag.register_extractor(name="tiny", license="MIT", num_features=8,
                                     weights_required=False)
        def build_tiny(spec):
            return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.AdaptiveAvgPool2d(1),
                                       torch.nn.Flatten())
    """

    def decorate(factory: Callable[..., T]) -> Callable[..., T]:
        spec = ExtractorSpec(factory=factory, **spec_fields)
        register_plugin(_ExtractorPlugin(spec), name=f"extractor:{spec.name}")
        return factory

    return decorate


def _collect(hook_name: str, kind: str) -> dict[str, Any]:
    """Call one list-returning hook per plugin, stamp each spec with its provider, and
    refuse duplicate names (aliases included)."""
    manager = get_plugin_manager()
    hook = getattr(manager.hook, hook_name)
    found: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for impl in reversed(hook.get_hookimpls()):  # registration order
        provider = _state.providers.get(id(impl.plugin), _Provider(IN_PROCESS, ""))
        try:
            specs = impl.function() or []
        except Exception as exc:
            raise PluginError(
                f"The {hook_name}() hook of {provider.distribution!r} raised "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        for spec in specs:
            spec = _stamp(spec, provider)
            for key in (spec.name, *getattr(spec, "aliases", ())):
                if key in owner:
                    raise DuplicateExtractorError(
                        f"Two installed packs provide the {kind} {key!r}: {owner[key]!r} and "
                        f"{provider.distribution!r}. Uninstall one of them (pip uninstall ...)."
                    )
                owner[key] = provider.distribution
            found[spec.name] = spec
    return found


def _stamp(spec: Any, provider: _Provider) -> Any:
    changes: dict[str, str] = {}
    if not spec.distribution:
        changes["distribution"] = provider.distribution
    if hasattr(spec, "version") and not spec.version:
        changes["version"] = provider.version
    if not changes:
        return spec
    from dataclasses import replace

    return replace(spec, **changes)


def _cached(key: str, compute: Callable[[], T]) -> T:
    with _state.lock:
        if key not in _state.cache:
            _state.cache[key] = compute()
        return _state.cache[key]


def extractor_specs() -> dict[str, ExtractorSpec]:
    """All listed extractor specs by name (aliases not included)."""
    return _cached("extractors", lambda: _collect("histobag_extractors", "extractor"))


def transform_specs() -> dict[str, Any]:
    """All registered transforms (stain normalizers, tile transforms) by name."""
    return _cached("transforms", lambda: _collect("histobag_transforms", "transform"))


def bag_writer_specs() -> dict[str, Any]:
    """All registered bag writers by name."""
    return _cached("writers", lambda: _collect("histobag_bag_writers", "bag writer"))


def resolve_extractor_spec(name: str) -> ExtractorSpec | None:
    """Ask packs that build model families by pattern whether they know ``name``."""
    manager = get_plugin_manager()
    for impl in reversed(manager.hook.histobag_resolve_extractor.get_hookimpls()):
        spec = impl.function(name=name)
        if spec is not None:
            provider = _state.providers.get(id(impl.plugin), _Provider(IN_PROCESS, ""))
            return _stamp(spec, provider)
    return None


def iter_providers() -> Iterable[tuple[str, str]]:
    """(distribution, version) of every loaded pack, core included."""
    get_plugin_manager()
    return sorted({(p.distribution, p.version) for p in _state.providers.values()})
