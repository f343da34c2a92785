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
