"""A job a live widget shows is not shown again as a table in the same cell (``frontend.shown_live``), and
only in that cell: a job staged with its widget outside a cell (an ipywidgets button's callback, an
``interact``) was hidden in the next cell too, where ``display(job)`` and ``job`` showed nothing at all."""

from __future__ import annotations

from IPython.utils.capture import capture_output

from jupyter_staging.kernel import api
from tests.helpers.data import SPITZER


def shown(shell, code: str) -> str:
    """The text of what the cell ``code`` displayed and its result."""
    with capture_output() as out:
        result = shell.run_cell(code)
    assert result.success, result.error_in_exec
    return out.stdout + "".join(o.data.get("text/plain", "") for o in out.outputs)


def test_a_job_shown_live_outside_a_cell_shows_in_the_next_cell(shell):
    job = api.stage(str(SPITZER), "from-a-button", show=True, wait=True)  # as a button's callback does
    shell.user_ns["job"] = job
    assert "/from-a-button (id" in shown(shell, "display(job)")
    assert "/from-a-button (id" in shown(shell, "job")


def test_a_job_shown_live_in_a_cell_is_not_shown_again_in_it_but_in_the_next(shell):
    shell.user_ns["source"] = str(SPITZER)
    cell = "from jupyter_staging.kernel import api\njob = api.stage(source, 'in-a-cell', show=True)\njob"
    text = shown(shell, cell)
    assert "/in-a-cell (id" not in text
    shell.run_cell("job.wait()")
    assert "/in-a-cell (id" in shown(shell, "job")
