"""docs/publisher.md stays true: its example runs as printed, its tables name what the code has."""
from __future__ import annotations

import pathlib
import re
import subprocess
import sys

from nvsentinel.node.publisher.config import PublisherSettings
from nvsentinel.node.publisher.publisher import Publisher

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "publisher.md"


def test_docs_example_runs_as_printed():
    """Verify the runnable example in docs/publisher.md prints exactly what the page shows."""
    text = DOC.read_text()
    code = re.search(r"## Runnable example\n\n```python\n(.*?)```", text, re.S)
    shown = re.search(r"compares\nthe output\.\n\n```text\n(.*?)```", text, re.S)
    assert code and shown
    out = subprocess.run([sys.executable, "-c", code.group(1)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == shown.group(1)


def test_docs_name_every_setting_and_metric():
    """Verify every flag and every metric of the publisher is documented."""
    import dataclasses

    text = DOC.read_text()
    for field in dataclasses.fields(PublisherSettings):
        assert f"`--{field.name.replace('_', '-')}`" in text, field.name
    pub = Publisher(object(), node_name="n")
    for metric in pub.metrics.registry.collect():
        name = metric.name + ("_total" if metric.type == "counter" else "")
        assert f"`{name}" in text, name
