"""Options: one set of options for every front end, named in each caller's terms; the house's import rules."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from idcfs.errors import UsageError, as_flag, as_keyword
from idcfs.options import Options

PACKAGE = Path(__file__).resolve().parents[2] / "idcfs"


def test_bad_values_are_named_as_the_caller_wrote_them(tmp_path):
    cache = {"cache_dir": tmp_path / "c"}
    for given, flag, keyword in (
        ({"cache_size": "lots"}, "--cache-size: bad size 'lots'", "cache_size: bad size 'lots'"),
        ({"memory": "1M"}, "--memory 1M is below the minimum of 16M", "memory 1M is below the minimum of 16M"),
        ({"cache_size": "1M"}, "(0 turns the block cache off)", "(0 turns the block cache off)"),
        ({"timeout": 0}, "--timeout: 0 is out of range: give 1 to 600", "timeout: 0 is out of range"),
        ({"idc_version": "x"}, "--idc-version: 'x' is not an IDC release", "idc_version: 'x' is not an IDC"),
        ({"source": "azure"}, "bad --source 'azure'", "bad source 'azure'"),
        ({"s3_endpoint": "localhost:9000"}, "bad --s3-endpoint 'localhost:9000'", "bad s3_endpoint"),
        ({"manifest": tmp_path / "none"}, "--manifest", "manifest"),
        ({"index": tmp_path / "none"}, f"--index {tmp_path / 'none'} is not a file", "index"),
        ({"template": "%collection_id", "layout": "readable"}, "give --template or --layout", "give template or"),
        ({"passthrough": "on"}, "bad --passthrough 'on'", "bad passthrough 'on'"),
    ):
        for spell, expect in ((as_flag, flag), (as_keyword, keyword)):
            with pytest.raises(UsageError) as e:
                Options.make(spell, **cache, **given)
            assert expect in str(e.value), (given, str(e.value))
            assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
    with pytest.raises(UsageError, match="pass a writable cache_dir"):
        Options.make(as_keyword, cache_dir="/proc/idcfs")
    with pytest.raises(UsageError, match="unknown option 'collection': did you mean 'collections'"):
        Options.make(as_keyword, collection="nlst")
    with pytest.raises(UsageError, match="unknown option 'source'"):
        Options.make(as_keyword, allowed=("filter",), source="aws")


def test_values_are_normalized(tmp_path, monkeypatch):
    monkeypatch.setenv("IDCFS_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("IDCFS_GCS_ENDPOINT", "")  # empty: unset
    manifest = tmp_path / "m.txt"
    manifest.write_text("1.2.3\n")
    o = Options.make(
        as_keyword,
        cache_dir=tmp_path / "c",
        cache_size="1G",
        memory="64M",
        timeout="5",
        idc_version="v18",
        licenses="CC BY 4.0",
        collections=["a", "b"],
        manifest=str(manifest),
    )
    assert (o.s3_endpoint, o.gcs_endpoint) == ("http://127.0.0.1:9", None)
    assert (o.cache_size, o.memory, o.timeout, o.idc_version) == (1 << 30, 64 << 20, 5.0, 18)
    assert o.licenses == ("CC BY 4.0",) and o.collections == ("a", "b")
    assert o.manifest == manifest and (tmp_path / "c").is_dir()  # paths as given: messages quote them so
    # Equal options are one engine's: idc:// keys its engines by them.
    again = Options.make(as_flag, **{k: getattr(o, k) for k in Options.names()})
    assert again == o and hash(again) == hash(o)
    with pytest.raises(UsageError, match="bad IDCFS_S3_ENDPOINT"):
        monkeypatch.setenv("IDCFS_S3_ENDPOINT", "nope")
        Options.make(cache_dir=tmp_path / "c")


def test_normalized_options_that_give_one_tree_are_equal(tmp_path):
    from idcfs.namespace import DEFAULT_TEMPLATE
    from idcfs.options import default_index

    plain = Options.make(as_keyword, cache_dir=tmp_path).normalized()
    for same in ({"layout": "idc"}, {"template": DEFAULT_TEMPLATE}, {"index": str(default_index())}):
        assert Options.make(as_keyword, cache_dir=tmp_path, **same).normalized() == plain, same
    assert Options.make(as_keyword, cache_dir=tmp_path, layout="readable").normalized() != plain
    with pytest.raises(UsageError, match="bad layout 'nice'"):
        Options.make(as_keyword, cache_dir=tmp_path, layout="nice").tree_template()
    with pytest.raises(UsageError, match="bad template '%bogus'"):
        Options.make(as_keyword, cache_dir=tmp_path, template="%bogus").tree_template()
    with pytest.raises(UsageError, match="allow_other is a switch"):
        Options.make(as_keyword, cache_dir=tmp_path, allow_other="no")


def test_one_errno_table_for_both_front_ends():
    import errno

    from idcfs.errors import IsADirectory, NoSuchPath, NotADirectory, StoreError, as_oserror, errno_of

    assert [errno_of(e("x")) for e in (StoreError, NoSuchPath, NotADirectory, IsADirectory)] == [
        errno.EIO,
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
    ]
    # A FileNotFoundError the engine did not raise on purpose (a cache file evicted under a reader) is not
    # "no such path": the mount answers EIO and logs it, idc:// passes it on as it is.
    stray, bug = FileNotFoundError(2, "gone"), ValueError("bug")
    assert errno_of(stray) is None and errno_of(bug) is None
    assert as_oserror(stray) is stray and as_oserror(bug) is bug
    failed = as_oserror(StoreError("origin down"))
    assert type(failed) is OSError and failed.errno == errno.EIO and "origin down" in str(failed)
    found = NoSuchPath("a/b")
    assert as_oserror(found) is found and isinstance(found, FileNotFoundError)


def test_options_become_the_mount_flags_that_give_them(tmp_path):
    from idcfs.cli import build_parser

    o = Options.make(
        as_keyword,
        cache_dir=tmp_path / "c",
        collections=("a", "b"),
        licenses=("commercial",),
        filter="Modality = 'CT'",
        cache_size="0",
        memory="64M",
        idc_version=18,
        allow_other=True,
        passthrough="off",
        layout="readable",
    )
    args = build_parser().parse_args(["mount", str(tmp_path / "m"), *o.to_argv()])
    assert args.collection == ["a", "b"] and args.license == ["commercial"] and args.allow_other
    flags = {
        "cache_dir": args.cache_dir,
        "collections": tuple(args.collection),
        "licenses": tuple(args.license),
        "filter": args.filter,
        "cache_size": args.cache_size,
        "memory": args.memory,
        "idc_version": args.idc_version,
        "allow_other": args.allow_other,
        "passthrough": args.passthrough,
        "layout": args.layout,
    }
    assert Options.make(as_flag, **flags) == o


def test_every_option_is_a_mount_flag_and_an_fstab_option():
    from idcfs.cli import build_parser
    from idcfs.fstab import FLAG_OPTIONS, VALUE_OPTIONS

    mount = next(
        a.choices["mount"] for a in build_parser()._actions if getattr(a, "choices", None) and "mount" in a.choices
    )
    flags = {s for a in mount._actions for s in a.option_strings}
    for name in Options.names():
        flag = as_flag(name.removesuffix("s") if name in ("collections", "licenses") else name)
        assert flag in flags, name
        key = flag[2:].replace("-", "_")
        assert key in VALUE_OPTIONS or key in FLAG_OPTIONS, name


def _imports() -> dict[str, set[str]]:
    """idcfs module -> the idcfs modules it imports, anywhere in it (lazy imports too)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                subs = {f"{module}.{a.name}" for a in node.names} & modules.keys()
                found |= subs or {module}  # `from . import x` imports x
        graph[name] = (found & modules.keys()) - {name}
    return graph


def test_the_import_graph_has_no_circle_and_only_main_imports_the_cli():
    graph = _imports()
    assert {m for m, deps in graph.items() if "idcfs.cli" in deps} == {"idcfs.__main__"}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            raise AssertionError("import circle: " + " -> ".join((*path[path.index(module) :], module)))
        if module not in done:
            for dep in graph[module]:
                visit(dep, (*path, module))
            done.add(module)

    for module in graph:
        visit(module, ())
    # The I/O layer loads neither duckdb nor the tree.
    assert graph["idcfs.store"] <= {"idcfs.errors"} and "idcfs.namespace" not in graph["idcfs.cache"]
    # Test tools are the sandbox command's alone.
    users = {m for m, deps in graph.items() if any(d.startswith("idcfs.testing") for d in deps)}
    assert {m for m in users if not m.startswith("idcfs.testing")} == {"idcfs.cli"}


def test_cli_and_python_take_the_same_options_with_the_same_defaults():
    from idcfs.cli import build_parser

    args = build_parser().parse_args(["mount", os.devnull])
    defaults = Options()
    assert args.source == defaults.source and args.timeout == defaults.timeout
    assert args.passthrough == defaults.passthrough and args.allow_other == defaults.allow_other
    from idcfs.cache import parse_size

    assert parse_size(args.memory) == defaults.memory
