"""The plugin manager: loads the ``histobag`` entry points once, lazily, and collects specs.

Packs are distributions with an entry point in the group ``histobag`` (see
:mod:`histobag.hookspecs`); scripts register hooks in-process with :func:`register_plugin` or
:func:`register_extractor`. Every hook is called through ``pm.hook.<name>(...)``, so pluggy's
semantics hold: implementations run last-registered first (``tryfirst``/``trylast`` move them),
``histobag_resolve_extractor`` stops at the first non-``None`` answer, wrappers see and may
change the results, and ``pm.enable_tracing()`` traces the calls.

How a broken pack stays contained (the design choice of this module):

* :class:`HistobagPluginManager` wraps each hook implementation of a plugin in a *guard* when
  the plugin is registered (pluggy's ``HookImpl.function`` is replaced; its ordering options
  are untouched). The guard calls the pack's function; an exception is recorded as a
  :class:`PluginFailure` of that pack (distribution, entry point, hook, error, traceback) and
  the guard returns ``None``, which pluggy leaves out of list results and skips for
  ``firstresult`` hooks. Wrappers get a generator guard with the same effect. A result of the
  wrong type is a failure too, so one bad pack never aborts a listing or a build.
* The guard stamps the specs a pack returns with its distribution and version (from
  ``importlib.metadata``, like datasette), so a spec always says where it came from.
* A pack that fails to import is a failure with an empty ``hook``.
* A name (or alias, case-insensitively) that two providers register is a clash: neither spec
  is used under that name, the clash is reported as a failure naming every provider, building
  the name raises :class:`~histobag.errors.DuplicateExtractorError`, and every other name keeps
  working. A spec whose own name clashes is withheld entirely (built through an alias, it would
  record a name that cannot be rebuilt); a spec whose alias clashes loses only that alias.
* ``HISTOBAG_DISABLE_PACKS=a,b`` (distribution or entry-point names) blocks packs before they
  are imported, like pytest's ``-p no:NAME``; naming core's own plugin is a
  :class:`~histobag.errors.PluginError`, as pytest refuses to disable its essential plugins.

Failures are returned by :func:`plugin_failures`, printed by ``histobag list`` (one line each;
``--debug`` adds the tracebacks and the switched-off packs) and warned once per process as
:class:`PluginWarning`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import threading
import traceback
import warnings
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, TypeVar

import pluggy

from histobag import builtin, hookspecs
from histobag._version import __version__
from histobag.errors import DuplicateExtractorError, PluginError
from histobag.specs import (
    BagWriterSpec,
    ExtractorSpec,
    SlideReaderSpec,
    TissueDetectorSpec,
    TransformSpec,
)

GROUP = "histobag"
IN_PROCESS = "<in-process>"
#: Environment variable listing packs to switch off (comma-separated).
DISABLE_ENV = "HISTOBAG_DISABLE_PACKS"
#: Name under which core's own plugin (:mod:`histobag.builtin`) is registered.
CORE_PLUGIN = "histobag.builtin"
# Names that mean core itself in HISTOBAG_DISABLE_PACKS (normalised).
_CORE_NAMES = frozenset({"builtin", "histobag", "histobag-builtin"})

#: What each hook returns (a list of these, or one for the firstresult hook): checked and
#: stamped by the guard.
_SPEC_TYPES: dict[str, type] = {
    "histobag_extractors": ExtractorSpec,
    "histobag_resolve_extractor": ExtractorSpec,
    "histobag_transforms": TransformSpec,
    "histobag_bag_writers": BagWriterSpec,
    "histobag_slide_readers": SlideReaderSpec,
    "histobag_tissue_detectors": TissueDetectorSpec,
}
_FIRSTRESULT = frozenset({"histobag_resolve_extractor"})

T = TypeVar("T")


class PluginWarning(UserWarning):
    """A pack failed: it did not import, one of its hooks raised, or it clashes with another."""


class PluginImportWarning(PluginWarning):
    """An installed pack could not be imported; nothing it provides is available."""


@dataclass(frozen=True)
class PluginFailure:
    """A pack that failed, as reported by :func:`plugin_failures` and ``histobag list``.

    Attributes:
        distribution: The pack's distribution (``"<in-process>"`` for script registrations;
            for a name clash, the first provider).
        entry_point: ``"name = module"`` of its entry point, or the in-process plugin name;
            empty for a name clash.
        hook: The hook that raised, e.g. ``"histobag_extractors"``; empty when the pack
            failed to import.
        error: ``"ExceptionType: message"``.
        traceback: The full traceback text; empty for a name clash (nothing raised).
        others: For a name clash, the other distributions that provide the name.
    """

    distribution: str
    entry_point: str
    hook: str
    error: str
    traceback: str = ""
    others: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.others:  # a name clash: the error names every provider
            return f"histobag name clash: {self.error.partition(': ')[2]}"
        if self.distribution == IN_PROCESS:
            who = f"in-process histobag plugin {self.entry_point!r}"
            remedy = "fix it, or unregister it (histobag.unregister_plugin)"
        else:
            who = f"histobag pack {self.distribution!r} (entry point {self.entry_point})"
            remedy = f"or switch it off with {DISABLE_ENV}={self.distribution}"
        if not self.hook:
            return (
                f"{who} failed to load: {self.error}. Nothing it provides is available; "
                f"reinstall it or its dependencies, {remedy}."
            )
        if self.distribution != IN_PROCESS:
            remedy = f"report it to the pack's authors, {remedy}"
        return (
            f"{who}: its {self.hook} hook failed: {self.error}. What it provides through that "
            f"hook is unavailable (`histobag list --debug` shows the traceback); {remedy}."
        )


@dataclass(frozen=True)
class DisabledPack:
    """An installed pack switched off by ``HISTOBAG_DISABLE_PACKS`` (never imported)."""

    distribution: str
    version: str
    entry_point: str


@dataclass(frozen=True)
class _Provider:
    """Who registered a plugin: stamped on its specs and named in its failures."""

    distribution: str
    version: str
    entry_point: str
    plugin_name: str


def _normalise(name: str) -> str:
    """PEP 503 normalisation, so ``histobag_gpl`` and ``HistoBag-GPL`` name the same pack."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _stamp(spec: Any, provider: _Provider) -> Any:
    """``spec`` with its provider's distribution and version filled in where empty."""
    changes: dict[str, str] = {}
    if not spec.distribution:
        changes["distribution"] = provider.distribution
    if hasattr(spec, "version") and not spec.version:
        changes["version"] = provider.version
    return dataclasses.replace(spec, **changes) if changes else spec


def _checked(result: Any, hook_name: str, provider: _Provider) -> Any:
    """Validate and stamp what one implementation of ``hook_name`` returned."""
    expected = _SPEC_TYPES.get(hook_name)
    if expected is None or result is None:  # a hook this module does not know: as returned
        return result
    if hook_name in _FIRSTRESULT:
        if not isinstance(result, expected):
            raise PluginError(
                f"{hook_name}() returned {type(result).__name__}, not an {expected.__name__} "
                "or None."
            )
        return _stamp(result, provider)
    if not isinstance(result, (list, tuple)) or not all(isinstance(s, expected) for s in result):
        raise PluginError(
            f"{hook_name}() must return a list of {expected.__name__}, got {result!r:.200}."
        )
    return [_stamp(spec, provider) for spec in result]


def _checked_wrapped(result: Any, hook_name: str, provider: _Provider) -> Any:
    """Validate and stamp what a wrapper returns: the whole hook result (a list with one
    entry per implementation, or one answer for a firstresult hook)."""
    if hook_name in _FIRSTRESULT or hook_name not in _SPEC_TYPES:
        return _checked(result, hook_name, provider)
    if not isinstance(result, list):
        raise PluginError(f"a {hook_name}() wrapper must return a list, got {result!r:.200}.")
    return [_checked(item, hook_name, provider) for item in result]


Record = Callable[[_Provider, str, BaseException], None]


def _guard(impl: pluggy.HookImpl, hook_name: str, provider: _Provider, record: Record) -> Any:
    """A stand-in for ``impl.function`` that turns the pack's exceptions into failures."""
    function = impl.function
    if impl.wrapper:
        return _guard_wrapper(function, hook_name, provider, record)
    if impl.hookwrapper:
        return _guard_old_wrapper(function, hook_name, provider, record)

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return _checked(function(*args, **kwargs), hook_name, provider)
        except Exception as exc:  # the pack's fault: recorded, and pluggy skips None
            record(provider, hook_name, exc)
            return None

    return guarded


def _guard_wrapper(
    function: Callable[..., Any], hook_name: str, provider: _Provider, record: Record
) -> Callable[..., Generator[None, Any, Any]]:
    """Guard of a new-style wrapper (``wrapper=True``): on failure the result passes through
    unchanged. An exception thrown *into* the wrapper (another hook failed) is not the
    wrapper's fault and propagates as pluggy would propagate it."""

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Generator[None, Any, Any]:
        try:
            gen = function(*args, **kwargs)
            next(gen)
        except Exception as exc:  # failed before yielding: stay out of this call
            record(provider, hook_name, exc)
            return (yield)
        try:
            result = yield
        except BaseException as inner:
            try:
                gen.throw(inner)
            except StopIteration as stop:
                return stop.value
            gen.close()
            raise
        try:
            gen.send(result)
        except StopIteration as stop:
            try:
                return _checked_wrapped(stop.value, hook_name, provider)
            except PluginError as exc:
                record(provider, hook_name, exc)
                return result
        except Exception as exc:
            record(provider, hook_name, exc)
            return result
        gen.close()
        record(provider, hook_name, RuntimeError("the wrapper yielded more than once"))
        return result

    return guarded


def _guard_old_wrapper(
    function: Callable[..., Any], hook_name: str, provider: _Provider, record: Record
) -> Callable[..., Generator[None, Any, None]]:
    """Guard of an old-style ``hookwrapper=True`` implementation (receives a ``Result``)."""

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Generator[None, Any, None]:
        try:
            gen = function(*args, **kwargs)
            next(gen)
        except Exception as exc:
            record(provider, hook_name, exc)
            yield
            return
        outcome = yield
        try:
            gen.send(outcome)
        except StopIteration:
            return
        except Exception as exc:
            record(provider, hook_name, exc)
            return
        gen.close()
        record(provider, hook_name, RuntimeError("the hookwrapper yielded more than once"))

    return guarded


class HistobagPluginManager(pluggy.PluginManager):
    """pluggy's manager, with the hook specs of :mod:`histobag.hookspecs`, guarded hook
    implementations (see the module docstring) and the record of failed and disabled packs.

    Registering or unregistering through it, directly or with :func:`register_plugin`,
    clears the cached listings.
    """

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.lock = threading.RLock()
        self._failures: dict[tuple[str, str], PluginFailure] = {}
        self._clashes: dict[str, dict[str, PluginFailure]] = {}
        self._warned: set[str] = set()
        self._cache: dict[str, Any] = {}
        self.disabled: list[DisabledPack] = []

    def register(
        self, plugin: object, name: str | None = None, *, provider: _Provider | None = None
    ) -> str | None:
        """Register ``plugin`` (see pluggy) and guard its hook implementations.

        Args:
            plugin: Module or object with ``@hookimpl`` functions.
            name: Plugin name; default pluggy's canonical name.
            provider: The distribution it comes from; default ``"<in-process>"``.

        Returns:
            The plugin name, or ``None`` if that name is blocked.
        """
        with self.lock:
            plugin_name = super().register(plugin, name)
            if plugin_name is None:
                return None
            provider = provider or _Provider(IN_PROCESS, "", plugin_name, plugin_name)
            self._guard_hooks(plugin, provider)
            self._invalidate()
            return plugin_name

    def _guard_hooks(self, plugin: object, provider: _Provider) -> None:
        for caller in self.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                # HookImpl.function is typed Final but is a plain slot; the guard goes in once,
                # before any call, and pluggy's ordering options (impl.opts) stay as they were.
                guarded = _guard(impl, caller.name, provider, self._record)
                setattr(impl, "function", guarded)  # noqa: B010
                if not caller.has_spec() and not impl.optionalhook:  # a typo, like pluggy's
                    known = ", ".join(n for n in dir(hookspecs) if n.startswith(GROUP + "_"))
                    problem = PluginError(f"histobag has no hook {caller.name!r} (hooks: {known})")
                    self._record(provider, caller.name, problem, with_traceback=False)

    def get_canonical_name(self, plugin: object) -> str:
        """Default plugin name: pluggy's (a module's or class's ``__name__``), but
        ``Class@address`` for an object instead of a bare ``id()``, so reports are readable."""
        name = getattr(plugin, "__name__", None)
        return name if isinstance(name, str) else f"{type(plugin).__qualname__}@{id(plugin):x}"

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any | None:
        """Unregister a plugin (see pluggy); its failures are forgotten."""
        with self.lock:
            name = name or (self.get_name(plugin) if plugin is not None else None)
            removed = super().unregister(plugin, name)
            for key in [k for k in self._failures if k[0] == name]:
                self._warned.discard(str(self._failures.pop(key)))
            self._invalidate()
            return removed

    def _invalidate(self) -> None:
        self._cache.clear()  # clashes are kept: the next listing compares against them

    def _record(
        self, provider: _Provider, hook: str, exc: BaseException, *, with_traceback: bool = True
    ) -> None:
        text = "".join(traceback.format_exception(exc)) if with_traceback else ""
        failure = PluginFailure(
            provider.distribution, provider.entry_point, hook, _error_text(exc), text
        )
        with self.lock:
            self._failures[(provider.plugin_name, hook)] = failure

    def record_import_failure(self, provider: _Provider, exc: BaseException) -> None:
        """Record a pack whose entry point could not be loaded or registered."""
        self._record(provider, "", exc)

    def failures(self) -> list[PluginFailure]:
        """Failures recorded so far: hooks that raised, imports that failed, name clashes."""
        with self.lock:
            clashes = [f for table in self._clashes.values() for f in table.values()]
            return [*self._failures.values(), *clashes]

    def warn_new_failures(self) -> None:
        """Warn once per process about each failure not warned about yet."""
        with self.lock:
            new = [f for f in self.failures() if str(f) not in self._warned]
            self._warned.update(str(f) for f in new)
        for failure in new:
            category = PluginImportWarning if not failure.hook else PluginWarning
            warnings.warn(str(failure), category, stacklevel=2)

    def call(self, hook_name: str, **kwargs: Any) -> Any:
        """``pm.hook.<hook_name>(**kwargs)``, then warn about any pack that failed in it."""
        with self.lock:
            result = getattr(self.hook, hook_name)(**kwargs)
        self.warn_new_failures()
        return result

    def cached(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()``, remembered until a plugin is registered or unregistered."""
        with self.lock:
            if key not in self._cache:
                self._cache[key] = compute()
            return self._cache[key]

    def collect(self, hook_name: str, kind: str) -> dict[str, Any]:
        """Specs by name from a list hook, with clashing names withheld and reported."""
        with self.lock:
            results: list[list[Any]] = getattr(self.hook, hook_name)()
            # Registration order; a wrapper may have left None where an implementation was.
            specs = [spec for result in reversed(results) if result for spec in result]
            providers: dict[str, list[str]] = {}
            for spec in specs:
                for key in {k.lower() for k in (spec.name, *getattr(spec, "aliases", ()))}:
                    providers.setdefault(key, []).append(spec.distribution)
            clashing = {k: v for k, v in providers.items() if len(v) > 1}
            table = {k: _clash_failure(kind, k, v, hook_name) for k, v in clashing.items()}
            for gone in set(self._clashes.get(kind, {}).values()) - set(table.values()):
                self._warned.discard(str(gone))  # should it come back, it is news again
            self._clashes[kind] = table
            found: dict[str, Any] = {}
            for spec in specs:
                if spec.name.lower() in clashing:
                    continue
                aliases = getattr(spec, "aliases", ())
                kept = tuple(a for a in aliases if a.lower() not in clashing)
                if kept != aliases:  # a clashing alias is withheld, the spec's own name is not
                    spec = dataclasses.replace(spec, aliases=kept)
                found[spec.name] = spec
        self.warn_new_failures()
        return found

    def clash(self, kind: str, name: str) -> PluginFailure | None:
        """The clash recorded for ``name`` among ``kind`` specs, if any."""
        with self.lock:
            return self._clashes.get(kind, {}).get(name.lower())


def _clash_message(kind: str, key: str, dists: Iterable[str]) -> str:
    names = [repr(d) for d in dists]
    both, neither = ("both", "neither") if len(names) == 2 else ("all", "none")
    return (
        f"{' and '.join(names)} {both} provide the {kind} {key!r}; {neither} is used under that "
        f"name. Uninstall one (pip uninstall ...) or switch one off with "
        f"{DISABLE_ENV}=<distribution>."
    )


def _clash_failure(kind: str, key: str, dists: list[str], hook_name: str) -> PluginFailure:
    error = f"{DuplicateExtractorError.__name__}: {_clash_message(kind, key, dists)}"
    return PluginFailure(dists[0], "", hook_name, error, "", tuple(dists[1:]))


def _disabled_names() -> set[str]:
    """Normalised names in ``HISTOBAG_DISABLE_PACKS``.

    Raises:
        PluginError: It names core's own plugin, which cannot be switched off (as pytest
            refuses ``-p no:`` for its essential plugins).
    """
    names = {_normalise(n) for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    core = sorted(names & _CORE_NAMES)
    if core:
        raise PluginError(
            f"{DISABLE_ENV} names {', '.join(core)}: core's own plugin (the built-in stain "
            "normalizers and bag writers) cannot be switched off. Remove it from "
            f"{DISABLE_ENV}; name packs by distribution (e.g. histobag-gpl) or entry point."
        )
    return names


def _load_packs(manager: HistobagPluginManager) -> None:
    """Register core's plugin and every installed pack that is not switched off."""
    disabled = _disabled_names()
    core = _Provider("histobag", __version__, "", CORE_PLUGIN)
    manager.register(builtin, name=CORE_PLUGIN, provider=core)
    for ep in entry_points(group=GROUP):
        # A distribution whose metadata lacks a name (half-installed) is named by its module.
        dist = (ep.dist.name if ep.dist else None) or ep.value
        version = (ep.dist.version if ep.dist else None) or ""
        plugin_name = f"{dist}:{ep.name}"
        provider = _Provider(dist, version, f"{ep.name} = {ep.value}", plugin_name)
        if {_normalise(dist), _normalise(ep.name)} & disabled:
            manager.set_blocked(plugin_name)  # like pytest's -p no:NAME: never imported
            manager.disabled.append(DisabledPack(dist, version, provider.entry_point))
            continue
        try:
            manager.register(ep.load(), name=plugin_name, provider=provider)
        except Exception as exc:  # a broken pack must not take the others down
            manager.record_import_failure(provider, exc)


_lock = threading.Lock()
_manager: HistobagPluginManager | None = None


def get_plugin_manager() -> HistobagPluginManager:
    """The process's plugin manager, loading installed packs on first call.

    Raises:
        PluginError: ``HISTOBAG_DISABLE_PACKS`` names core's own plugin.
    """
    global _manager
    with _lock:
        if _manager is None:
            manager = HistobagPluginManager()
            _load_packs(manager)  # may raise (HISTOBAG_DISABLE_PACKS): then nothing is kept
            _manager = manager
            manager.warn_new_failures()
        return _manager


def plugin_failures() -> list[PluginFailure]:
    """Packs that failed in this process: imports that failed, hooks that raised (each with
    its traceback) and names that two providers register.

    Lists extractors, transforms and bag writers first, so their failures are included.
    """
    with warnings.catch_warnings():  # the caller asked: no need to warn as well
        warnings.simplefilter("ignore", PluginWarning)
        extractor_specs()
        transform_specs()
        bag_writer_specs()
    return get_plugin_manager().failures()


def disabled_packs() -> list[DisabledPack]:
    """Installed packs switched off by ``HISTOBAG_DISABLE_PACKS``."""
    return list(get_plugin_manager().disabled)


def register_plugin(plugin: object, name: str | None = None) -> object:
    """Register a module or object implementing histobag hooks, without packaging it.

    Useful in scripts and notebooks. Returns ``plugin`` so it can be used as a decorator on a
    class. Its extractors show as provided by ``"<in-process>"``.
    """
    get_plugin_manager().register(plugin, name=name)
    return plugin


def unregister_plugin(plugin: object) -> None:
    """Undo :func:`register_plugin`."""
    get_plugin_manager().unregister(plugin)


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


def _specs(hook_name: str, kind: str) -> dict[str, Any]:
    manager = get_plugin_manager()
    return manager.cached(hook_name, lambda: manager.collect(hook_name, kind))


def extractor_specs() -> dict[str, ExtractorSpec]:
    """All listed extractor specs by name (aliases not included; clashing names withheld)."""
    return _specs("histobag_extractors", "extractor")


def transform_specs() -> dict[str, TransformSpec]:
    """All registered transforms (stain normalizers, tile transforms) by name."""
    return _specs("histobag_transforms", "transform")


def bag_writer_specs() -> dict[str, BagWriterSpec]:
    """All registered bag writers by name."""
    return _specs("histobag_bag_writers", "bag writer")


def slide_reader_specs() -> dict[str, SlideReaderSpec]:
    """All registered slide readers by name."""
    return _specs("histobag_slide_readers", "slide reader")


def tissue_detector_specs() -> dict[str, TissueDetectorSpec]:
    """All registered tissue detectors by name."""
    return _specs("histobag_tissue_detectors", "tissue detector")


def resolve_extractor_spec(name: str) -> ExtractorSpec | None:
    """Ask the ``histobag_resolve_extractor`` hook (firstresult) about a name no pack lists.

    Returns:
        The first non-``None`` answer in pluggy's order, stamped with its pack, or ``None``.

    Raises:
        DuplicateExtractorError: Two providers list ``name``; the message names both.
    """
    extractor_specs()  # records the clashes
    manager = get_plugin_manager()
    clash = manager.clash("extractor", name)
    if clash is not None:
        providers = (clash.distribution, *clash.others)
        raise DuplicateExtractorError(_clash_message("extractor", name.lower(), providers))
    spec: ExtractorSpec | None = manager.call("histobag_resolve_extractor", name=name)
    return spec
