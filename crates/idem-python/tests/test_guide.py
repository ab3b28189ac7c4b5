"""docs/guides/python.md: its ```python blocks run, in order, in one namespace, so the
guide cannot drift from the package."""

from pathlib import Path

GUIDE = Path(__file__).resolve().parents[3] / "docs" / "guides" / "python.md"


def python_blocks(markdown):
    blocks, current = [], None
    for line in markdown.splitlines():
        stripped = line.strip()
        if current is None and stripped == "```python":
            current = []
        elif current is not None and stripped == "```":
            blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_the_guides_python_runs():
    blocks = python_blocks(GUIDE.read_text())
    assert len(blocks) >= 4, "the guide's examples were found"
    namespace = {"__name__": "guide"}
    for number, block in enumerate(blocks, 1):
        try:
            exec(compile(block, f"{GUIDE.name} block {number}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"block {number} of {GUIDE.name} failed:\n{block}") from error
