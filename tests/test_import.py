import subprocess
import sys

HEAVY = ("torch", "transformers", "lancedb", "faiss")


def _loaded_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_import_is_light():
    assert _loaded_after("import unite_search; unite_search.Item(text='x'); unite_search.EncoderSettings()") == []


def test_cli_help_is_light():
    code = (
        "from click.testing import CliRunner\nfrom unite_search.cli import main\n"
        "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0 and 'embed' in r.output\n"
        "r = CliRunner().invoke(main, ['embed', '--help']); assert r.exit_code == 0"
    )
    assert _loaded_after(code) == []


def test_encoder_class_needs_no_torch_until_used():
    assert _loaded_after("import unite_search; unite_search.Encoder") == []


def test_every_error_class_lives_in_errors_and_is_exported():
    import inspect
    import re
    from pathlib import Path

    import unite_search
    import unite_search.errors as errors

    classes = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == errors.__name__
    }
    assert {"ConfigError", "DeviceError", "IngestError", "IngestCrashError", "DatasetError"} <= classes
    assert classes <= set(unite_search.__all__)
    assert all(getattr(unite_search, name) is getattr(errors, name) for name in classes)
    assert all(issubclass(getattr(errors, name), errors.UniteError) for name in classes - {"UniteError"})
    package = Path(unite_search.__file__).parent
    defined_elsewhere = [
        f"{path.relative_to(package)}: {m.group(0)}"
        for path in package.rglob("*.py")
        if path.name != "errors.py"
        for m in re.finditer(r"^class \w+\([\w.]*(Error|Exception)\b", path.read_text(), re.M)
    ]
    assert defined_elsewhere == []


def test_user_input_never_meets_a_bare_value_key_or_type_error():
    """The modules that check what users pass raise typed errors (still ValueErrors where they were)."""
    import re
    from pathlib import Path

    import unite_search

    package = Path(unite_search.__file__).parent
    checked = ["batching", "corpus", "encoder", "frames", "frametimes", "image", "ingestion", "modality", "passages",
               "runs", "settings", "units", "video"]  # fmt: skip
    bare = [
        f"{name}.py: {m.group(0)}"
        for name in checked
        for m in re.finditer(r"raise (ValueError|KeyError|TypeError)\b", (package / f"{name}.py").read_text())
    ]
    assert bare == []
