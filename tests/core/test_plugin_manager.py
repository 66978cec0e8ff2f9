"""The plugin manager calls every hook through pluggy and contains a broken or clashing pack."""

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pluggy
import pytest
import torch

import histobag
from histobag import hookspecs, plugins
from histobag.errors import DuplicateExtractorError, PluginError, UnknownExtractorError
from histobag.hookspecs import hookimpl
from histobag.plugins import PluginWarning, plugin_failures
from histobag.specs import TransformSpec
from tests.core.toy_models import registered, toy_spec


@contextlib.contextmanager
def plugged(*plugin_objects):
    """Register in-process plugins, in order, for a ``with`` block."""
    for plugin in plugin_objects:
        histobag.register_plugin(plugin)
    try:
        yield
    finally:
        for plugin in reversed(plugin_objects):
            histobag.unregister_plugin(plugin)


class Resolver:
    """Answers every ``fam-*`` name, saying in the description which resolver answered."""

    def __init__(self, label: str) -> None:
        self.label = label

    @hookimpl
    def histobag_resolve_extractor(self, name):
        if not name.startswith("fam-"):
            return None
        return toy_spec(name=name, aliases=(), description=self.label)


class EagerResolver(Resolver):
    @hookimpl(tryfirst=True)
    def histobag_resolve_extractor(self, name):
        return super().histobag_resolve_extractor(name)


class RaisingResolver:
    @hookimpl(tryfirst=True)
    def histobag_resolve_extractor(self, name):
        raise RuntimeError(f"resolver bug on {name}")


class BrokenExtractors:
    @hookimpl
    def histobag_extractors(self):
        raise ValueError("boom from a broken pack")


def _pluggy_answer(plugin_objects, name):
    """What plain pluggy answers with the same plugins registered in the same order: the
    reference for histobag's firstresult order."""
    reference = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    reference.add_hookspecs(hookspecs)
    for plugin in plugin_objects:
        reference.register(plugin)
    return reference.hook.histobag_resolve_extractor(name=name)


def _failures_of(entry_point):
    return [f for f in plugin_failures() if f.entry_point == entry_point]


# --- pluggy's order, firstresult, wrappers, tracing ---------------------------------------


@pytest.mark.parametrize(
    ("classes", "winner"),
    [
        ((Resolver, Resolver), 1),  # last registered is asked first
        ((EagerResolver, Resolver), 0),  # tryfirst beats registration order
        ((Resolver, EagerResolver), 1),
    ],
)
def test_resolve_is_firstresult_in_pluggys_order(classes, winner):
    resolvers = [cls(f"resolver {i}") for i, cls in enumerate(classes)]
    with plugged(*resolvers):
        spec = plugins.resolve_extractor_spec("fam-x")
    expected = _pluggy_answer(resolvers, "fam-x")
    assert spec.description == expected.description == f"resolver {winner}"
    assert spec.name == "fam-x" and spec.pack == "<in-process>"


def test_a_resolver_that_raises_is_reported_and_the_next_one_answers():
    raising = RaisingResolver()
    with plugged(Resolver("fallback"), raising):
        with pytest.warns(PluginWarning, match="histobag_resolve_extractor hook failed"):
            spec = histobag.extractor_info("fam-y")
        assert spec.description == "fallback"
        (failure,) = _failures_of(histobag.plugins.get_plugin_manager().get_name(raising))
        assert failure.error == "RuntimeError: resolver bug on fam-y"
        assert "raise RuntimeError" in failure.traceback


def test_a_wrapper_sees_and_changes_the_result():
    class Curator:
        @hookimpl(wrapper=True)
        def histobag_extractors(self):
            results = yield
            kept = [[s for s in specs if s.name != "toy"] for specs in results]
            return [*kept, [toy_spec(name="curated", aliases=())]]

    with registered(toy_spec()), plugged(Curator()):
        names = histobag.list_extractors()
        assert "curated" in names and "toy" not in names
        assert "resnet50_imagenet" in names
        assert histobag.extractor_info("curated").pack == "<in-process>"


def test_a_wrapper_that_raises_leaves_the_result_alone():
    class BadWrapper:
        @hookimpl(wrapper=True)
        def histobag_extractors(self):
            yield
            raise KeyError("wrapper bug")

    bad = BadWrapper()
    with registered(toy_spec()), plugged(bad):
        with pytest.warns(PluginWarning, match="KeyError"):
            assert "toy" in histobag.list_extractors()
        (failure,) = _failures_of(histobag.plugins.get_plugin_manager().get_name(bad))
        assert failure.hook == "histobag_extractors" and "wrapper bug" in failure.traceback


def test_hook_calls_are_traced_by_pluggy():
    manager = plugins.get_plugin_manager()
    lines = []
    manager.trace.root.setwriter(lines.append)
    undo = manager.enable_tracing()
    try:
        with plugged(Resolver("traced")):
            plugins.resolve_extractor_spec("fam-z")
    finally:
        undo()
        manager.trace.root.setwriter(None)
    assert any("histobag_resolve_extractor" in line for line in lines)


# --- a pack that raises -------------------------------------------------------------------


def test_a_hook_that_raises_is_reported_while_other_packs_list_and_build(tiles224):
    broken = BrokenExtractors()
    with registered(toy_spec()), plugged(broken):
        name = plugins.get_plugin_manager().get_name(broken)
        with pytest.warns(
            PluginWarning, match=re.escape(f"plugin {name!r}: its histobag_extractors hook failed")
        ):
            names = histobag.list_extractors()
        assert "toy" in names and "resnet50_imagenet" in names
        (failure,) = _failures_of(name)
        assert failure in histobag.plugin_failures()
        assert (failure.distribution, failure.hook) == ("<in-process>", "histobag_extractors")
        assert failure.error == "ValueError: boom from a broken pack"
        assert failure.traceback.startswith("Traceback (most recent call last)")
        assert 'raise ValueError("boom from a broken pack")' in failure.traceback
        fe = histobag.build_feature_extractor("toy", weights="random", device="cpu")
        assert fe(tiles224).shape == (4, 8)
    assert not _failures_of(name)  # forgotten with the plugin


def test_list_prints_one_line_per_failed_pack_and_debug_the_traceback(capsys):
    from histobag.cli import main

    with registered(toy_spec()), plugged(BrokenExtractors()):
        assert main(["list"]) == 0
        plain = capsys.readouterr()
        assert main(["list", "--debug"]) == 0
        debug = capsys.readouterr()
    assert "toy" in plain.out and "toy" in debug.out
    notices = [line for line in plain.err.splitlines() if "boom from a broken pack" in line]
    assert len(notices) == 1 and notices[0].startswith("warning: ")
    assert "Traceback" not in plain.err
    assert "Traceback (most recent call last)" in debug.err
    assert 'raise ValueError("boom from a broken pack")' in debug.err


def test_a_hook_returning_the_wrong_type_is_a_failure():
    class WrongType:
        @hookimpl
        def histobag_extractors(self):
            return toy_spec(name="not-in-a-list")

    wrong = WrongType()
    with registered(toy_spec()), plugged(wrong):
        with pytest.warns(PluginWarning, match="must return a list of ExtractorSpec"):
            assert "toy" in histobag.list_extractors()
        (failure,) = _failures_of(plugins.get_plugin_manager().get_name(wrong))
        assert failure.error.startswith("PluginError:")


def test_an_unknown_hook_name_is_reported():
    class Typo:
        @hookimpl
        def histobag_extractor(self):  # missing "s"
            return []

    typo = Typo()
    with plugged(typo):
        with pytest.warns(PluginWarning, match="no hook 'histobag_extractor'"):
            histobag.list_extractors()


# --- name clashes -------------------------------------------------------------------------


def test_a_clash_names_both_providers_and_neither_wins(tiles224):
    a = toy_spec(name="dup", aliases=("dup-a",), distribution="pack-a")
    b = toy_spec(name="DUP", aliases=("dup-b",), distribution="pack-b")
    with registered(a, toy_spec(name="only-a", distribution="pack-a")), registered(b):
        with pytest.warns(PluginWarning, match="'pack-a' and 'pack-b' both provide"):
            names = histobag.list_extractors()
        assert not {"dup", "DUP", "dup-a", "dup-b"} & set(names)
        assert "only-a" in names and "resnet50_imagenet" in names
        for name in ("dup", "DUP"):
            with pytest.raises(DuplicateExtractorError, match="'pack-a' and 'pack-b'"):
                histobag.build_feature_extractor(name, weights="random")
        # A spec withheld under its name is withheld entirely: built through an alias it
        # would record a name that cannot be rebuilt.
        with pytest.raises(UnknownExtractorError):
            histobag.extractor_info("dup-a")
        (clash,) = [f for f in plugin_failures() if f.others]
        assert (clash.distribution, clash.others) == ("pack-a", ("pack-b",))
        assert clash.hook == "histobag_extractors"
        fe = histobag.build_feature_extractor("only-a", weights="random", device="cpu")
        assert fe(tiles224).dtype == torch.float32
    assert not [f for f in plugin_failures() if f.others]


def test_an_alias_clashing_with_an_installed_model_withholds_that_name_only():
    with registered(toy_spec(name="toy", aliases=("toy-alias", "resnet50_imagenet"))):
        with pytest.warns(PluginWarning, match="'histobag-apache' and '<in-process>'"):
            names = histobag.list_extractors()
        assert "resnet50_imagenet" not in names and "toy" in names
        assert histobag.extractor_info("toy").aliases == ("toy-alias",)
        assert histobag.extractor_info("resnet18_imagenet").pack == "histobag-apache"
        with pytest.raises(DuplicateExtractorError) as err:
            histobag.extractor_info("resnet50_imagenet")
    assert "histobag-apache" in str(err.value) and "<in-process>" in str(err.value)
    assert "resnet50_imagenet" in histobag.list_extractors()


def test_a_clashing_transform_is_withheld_and_the_others_stay():
    class Normalizers:
        @hookimpl
        def histobag_transforms(self):
            return [TransformSpec("macenko", "somewhere:Else")]

    builtin = set(plugins.transform_specs())
    assert "macenko" in builtin
    with plugged(Normalizers()):
        with pytest.warns(PluginWarning, match="'histobag' and '<in-process>' both provide"):
            specs = plugins.transform_specs()
        assert set(specs) == builtin - {"macenko"}
    assert plugins.transform_specs()["macenko"].distribution == "histobag"


# --- HISTOBAG_DISABLE_PACKS (real entry points, fresh interpreters) -----------------------


def _histobag(*args, disable):
    exe = Path(sys.executable).with_name("histobag")
    assert exe.exists(), f"console script not installed next to {sys.executable}"
    return subprocess.run(
        [str(exe), *args],
        env={**os.environ, plugins.DISABLE_ENV: disable},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("disable", ["histobag-gpl", "gpl", "HistoBag_GPL, nothing-by-that-name"])
def test_disable_packs_switches_gpl_off(disable):
    gpl = set(histobag.list_extractors(pack="histobag-gpl"))
    apache = set(histobag.list_extractors(pack="histobag-apache"))
    assert {"ctranspath", "retccl"} <= gpl and apache
    proc = _histobag("list", "--json", disable=disable)
    assert proc.returncode == 0, proc.stderr
    listed = {spec["name"] for spec in json.loads(proc.stdout)}
    assert not listed & gpl
    assert apache <= listed


def test_list_debug_shows_the_disabled_pack():
    proc = _histobag("list", "--debug", disable="histobag-gpl")
    assert proc.returncode == 0, proc.stderr
    names = {line.split()[0] for line in proc.stdout.splitlines()[2:] if line.strip()}
    assert "ctranspath" not in names and "resnet50_imagenet" in names
    disabled = [line for line in proc.stderr.splitlines() if "HISTOBAG_DISABLE_PACKS" in line]
    assert len(disabled) == 1 and "histobag-gpl" in disabled[0]
    assert "gpl = histobag_gpl.plugin" in disabled[0]


@pytest.mark.parametrize("name", ["builtin", "histobag"])
def test_core_cannot_be_disabled(name):
    proc = _histobag("list", disable=name)
    assert proc.returncode == 2
    assert "cannot be switched off" in proc.stderr and name in proc.stderr


def test_core_named_in_process_is_a_plugin_error(monkeypatch):
    monkeypatch.setenv(plugins.DISABLE_ENV, "histobag-gpl,builtin")
    with pytest.raises(PluginError, match="core's own plugin"):
        plugins._disabled_names()
