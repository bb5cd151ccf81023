"""Helpers shared by several test modules (imported as `helpers`: pytest puts tests/ on sys.path)."""
from __future__ import annotations

import torch

from fastsde import cli


def run_cli(capsys, *argv):
    """(exit code, stdout, stderr) of `fastsde ARGV` run in this process."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    """The single `fastsde: error: ...` line of a failed command's stderr (no traceback, not marked as a bug)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastsde: error: "), err
    assert "Traceback" not in err and not lines[0].startswith("fastsde: error: unexpected "), err
    return lines[0]


class ScaledModel(torch.nn.Module):
    """A model times a buffer: .double() moves the buffer to new storage in a new dtype (a re-recording of a
    captured sampler that needs a recompile of its compiled step)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x, labels):
        return self.inner(x, labels) * self.scale.to(x.dtype)
