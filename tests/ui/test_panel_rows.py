"""The Staging panel's dense rows and its form's defaults, in a real JupyterLab driven in chromium.

Acceptance 2 of issue 13: the form's default destination used twice in a row (both succeed, nothing lands
in the server root); progress never above 100 % for a download converted to Parquet; the contrast of error
text at least 4.5:1 in the light and the dark theme, computed in the browser from ``getComputedStyle``;
three jobs whose names share a long prefix told apart (middle ellipsis, tooltip with source → destination);
no DataFrame action for an image. The panel is saved as PNGs in both themes (``panel-light.png``,
``panel-dark.png`` in ``tests/ui/screenshots/``).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.helpers.data import KEPLER, SHARED_DATA, wait_until
from tests.helpers.servers import RangeHTTPServer

from .conftest import JupyterLabProcess
from .test_panel import PANEL, job_item, open_panel

pytestmark = pytest.mark.slow

IMAGE = SHARED_DATA / "allsky_rosat.fits"  # an image and no table
#: WCAG 2 contrast for normal text (AA).
MIN_CONTRAST = 4.5
_UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}

#: The WCAG contrast of each matching element's text against what is painted behind it: the colours are
#: the browser's computed ones, translucent text and backgrounds composited over the first opaque ancestor.
CONTRAST_JS = """(selector) => {
  const parse = (c) => {
    const v = c.match(/[\\d.]+/g).map(Number);
    return [v[0], v[1], v[2], v.length > 3 ? v[3] : 1];
  };
  const over = (fg, bg) => [0, 1, 2].map((i) => fg[i] * fg[3] + bg[i] * (1 - fg[3])).concat([1]);
  const behind = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
    }
    let bg = [255, 255, 255, 1];
    for (const layer of layers.reverse()) bg = over(layer, bg);
    return bg;
  };
  const lum = (c) => {
    const f = (x) => { x /= 255; return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
  };
  return [...document.querySelectorAll(selector)].map((el) => {
    const bg = behind(el);
    const fg = over(parse(getComputedStyle(el).color), bg);
    const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    return {text: el.textContent.slice(0, 50), color: getComputedStyle(el).color, ratio};
  });
}"""


#: A row as shown at one instant (the bar is gone once the job has ended).
ROW_SNAPSHOT_JS = """(li) => ({
  state: li.dataset.state,
  bar: li.querySelector('.jp-Staging-bar')?.getAttribute('aria-valuenow') ?? '',
  summary: li.querySelector('.jp-Staging-summary')?.innerText ?? '',
  meta: li.querySelector('.jp-Staging-meta')?.innerText ?? '',
})"""


def set_theme(page: Any, name: str, light: bool) -> None:
    page.evaluate("(theme) => window.jupyterapp.commands.execute('apputils:change-theme', {theme})", name)
    page.wait_for_function(
        "(light) => document.body.dataset.jpThemeLight === String(light)", arg=light, timeout=30_000
    )
    page.wait_for_timeout(500)  # the theme's stylesheet applied


def to_bytes(text: str) -> float:
    number, unit = text.split()
    return float(number) * _UNITS[unit]


def figures_within_totals(summary: str) -> bool:
    """True when every ``X of Y`` in a row's summary has X <= Y."""
    pairs = re.findall(r"([\d.]+ [kMGT]?B) of ([\d.]+ [kMGT]?B)", summary)
    return all(to_bytes(done) <= to_bytes(total) for done, total in pairs)


def submit_form(page: Any, source: str, **fields: str) -> None:
    open_panel(page)
    page.click(f"{PANEL} .jp-Staging-newButton")
    form = page.locator(f"{PANEL} form.jp-Staging-form")
    form.wait_for()
    form.locator('input[name="source"]').fill(source)
    for name, value in fields.items():
        form.locator(f'input[name="{name}"]').fill(value)
    form.get_by_role("button", name="Stage").click()
    form.wait_for(state="detached", timeout=15_000)


def stage_with_the_form(lab: JupyterLabProcess, page: Any, source: Path) -> str:
    """Submit ``source`` with every other field as the form starts; returns the new job's id once it
    succeeded."""
    known = {j["id"] for j in lab.request("GET", "jobs").json()["jobs"]}
    submit_form(page, str(source))
    job = wait_until(
        lambda: next((j for j in lab.request("GET", "jobs").json()["jobs"] if j["id"] not in known), None),
        15,
        f"the job of {source.name}",
    )
    done = lab.wait_for(job["id"], lambda j: j["state"] in ("succeeded", "failed"), timeout=60)
    assert done["state"] == "succeeded", (done["error"], lab.log_path.read_text()[-4000:])
    return str(done["id"])


def state_of(page: Any, job_id: str) -> str | None:
    return job_item(page, job_id).get_attribute("data-state")


@pytest.fixture(scope="module")
def table_http(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A throttled HTTP server holding a 2.6 MB CSV table (a download of about 6 s) and the Kepler FITS."""
    folder = tmp_path_factory.mktemp("http-table")
    with (folder / "survey_table.csv").open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "ra", "dec", "flux", "label"])
        for i in range(60_000):
            writer.writerow(
                [i, f"{i * 0.006:.6f}", f"{-30 + i * 0.001:.6f}", f"{i * 1.37:.4f}", f"src-{i:06d}"]
            )
    (folder / "kplr.fits").write_bytes(KEPLER.read_bytes())
    with RangeHTTPServer(folder, throttle_bytes_per_s=450_000) as server:
        yield server


def test_form_default_destination_twice_in_a_row(lab: JupyterLabProcess, page: Any) -> None:
    open_panel(page)
    page.click(f"{PANEL} .jp-Staging-newButton")
    form = page.locator(f"{PANEL} form.jp-Staging-form")
    destination = form.locator('input[name="destination"]')
    # Empty, and the placeholder says where the data goes: staging/<name>, as %stage does.
    assert destination.input_value() == ""
    form.locator('input[name="source"]').fill(str(SHARED_DATA / "SHA256SUMS"))
    assert destination.get_attribute("placeholder") == "staging/SHA256SUMS"
    form.get_by_role("button", name="Cancel").click()

    ids = [
        stage_with_the_form(lab, page, source)
        for source in (SHARED_DATA / "SHA256SUMS", SHARED_DATA / "README.md")
    ]
    jobs = [lab.job(i) for i in ids]
    assert [j["destination"] for j in jobs] == ["staging/SHA256SUMS", "staging/README"]
    assert (lab.root_dir / "staging" / "SHA256SUMS" / "SHA256SUMS").is_file()
    assert (lab.root_dir / "staging" / "README" / "README.md").is_file()

    # The same source again: up to date, answered at once, still nothing in the root.
    submit_form(page, str(SHARED_DATA / "SHA256SUMS"))
    page.locator(f"{PANEL} .jp-Staging-upToDateNotice", has_text="staging/SHA256SUMS/").wait_for()
    assert sorted(p.name for p in lab.root_dir.iterdir() if not p.name.startswith(".")) == ["staging"]
    for job_id in ids:
        page.wait_for_selector(f'{PANEL} li[data-job-id="{job_id}"][data-state="succeeded"]')
    assert not page.locator(f"{PANEL} .jp-Staging-error").count()


def test_form_clears_a_stale_error_on_edit_and_offers_hdu_and_if_exists(page: Any) -> None:
    open_panel(page)
    page.click(f"{PANEL} .jp-Staging-newButton")
    form = page.locator(f"{PANEL} form.jp-Staging-form")
    form.get_by_role("button", name="Stage").click()  # no source: refused in the form
    form.locator(".jp-Staging-formError").wait_for()
    form.locator('input[name="source"]').fill(str(KEPLER))
    assert form.locator(".jp-Staging-formError").count() == 0
    assert form.locator('select[name="ifExists"] option').all_inner_texts() == [
        "reuse it if unchanged",
        "stage it again",
        "stop with an error",
    ]
    form.locator('input[name="toParquet"]').check()
    assert form.locator('input[name="hdu"]').get_attribute("placeholder") == "first table"
    form.get_by_role("button", name="Cancel").click()


def test_the_form_converts_a_latin1_csv_with_the_encoding_given(
    lab: JupyterLabProcess, page: Any, tmp_path: Path
) -> None:
    """The form's "CSV encoding" field reaches the conversion: the Latin-1 names are strings in the
    Parquet, and the job's view says which encoding the text was read in."""
    source = tmp_path / "names.csv"
    source.write_bytes("name,flux\nAlpha Cen,1.5\nBeta \xc5ngstr\xf6m,2.5\n".encode("latin-1"))
    known = {j["id"] for j in lab.request("GET", "jobs").json()["jobs"]}
    open_panel(page)
    page.click(f"{PANEL} .jp-Staging-newButton")
    form = page.locator(f"{PANEL} form.jp-Staging-form")
    form.locator('input[name="source"]').fill(str(source))
    form.locator('input[name="toParquet"]').check()
    assert form.locator('input[name="encoding"]').get_attribute("placeholder") == "UTF-8"
    form.locator('input[name="encoding"]').fill("latin-1")
    form.get_by_role("button", name="Stage").click()
    form.wait_for(state="detached", timeout=15_000)
    job = wait_until(
        lambda: next((j for j in lab.request("GET", "jobs").json()["jobs"] if j["id"] not in known), None),
        15,
        "the job of names.csv",
    )
    done = lab.wait_for(job["id"], lambda j: j["state"] in ("succeeded", "failed"), timeout=60)
    assert done["state"] == "succeeded", done["error"]
    assert done["convert"]["encoding"] == "iso8859-1"
    parts = sorted((lab.root_dir / done["destination"]).glob("names.parquet/part-*.parquet"))
    assert pq.read_table(parts[0]).column("name").to_pylist() == ["Alpha Cen", "Beta Ångström"]
    item = job_item(page, done["id"])
    item.hover()
    item.get_by_role("button", name="Log").click()
    view = page.locator(f'.jp-Staging-detailBody[data-job-id="{done["id"]}"]')
    view.locator(".jp-Staging-facts", has_text="text in iso8859-1").wait_for(timeout=10_000)


def test_converted_download_never_shows_more_than_100_percent(
    lab: JupyterLabProcess, page: Any, table_http: RangeHTTPServer
) -> None:
    open_panel(page)
    job = lab.create_job(
        {"source": table_http.url("survey_table.csv"), "convert": {"format": "parquet", "chunk_rows": 20_000}}
    )
    item = job_item(page, job["id"])
    item.wait_for(timeout=10_000)
    seen: list[tuple[str, str, str]] = []

    def look() -> bool:
        """One snapshot of the row: bar percentage, figures, percentage text; True once the job ended."""
        snap = item.evaluate(ROW_SNAPSHOT_JS)
        seen.append((snap["bar"], snap["summary"], snap["meta"]))
        return snap["state"] in ("succeeded", "failed")

    wait_until(look, 90, "the converted download to finish", interval=0.2)
    look()
    assert state_of(page, job["id"]) == "succeeded", lab.job(job["id"])["error"]
    assert len(seen) > 5, seen
    for bar, summary, meta in seen:
        assert bar == "" or 0 <= float(bar) <= 100, seen
        assert figures_within_totals(summary), summary
        if meta.endswith("%"):
            assert 0 <= int(meta[:-1]) <= 100, meta
    assert any(bar for bar, _, _ in seen), seen  # a bar while it ran, none once done
    assert item.locator(".jp-Staging-bar").count() == 0
    assert "chunks" in item.locator(".jp-Staging-chunkCount").inner_text()
    # It produced Parquet: the DataFrame action is there (on hover).
    item.hover()
    assert item.get_by_role("button", name="DataFrame").is_visible()


def test_no_dataframe_action_for_an_image(lab: JupyterLabProcess, page: Any) -> None:
    open_panel(page)
    job = lab.create_job({"source": str(IMAGE), "convert": {"format": "parquet"}})
    page.wait_for_selector(f'{PANEL} li[data-job-id="{job["id"]}"][data-state="succeeded"]', timeout=60_000)
    item = job_item(page, job["id"])
    item.hover()
    item.get_by_role("button", name="Log").wait_for()
    page.wait_for_timeout(1000)  # time for the chunks to be asked for and the row to update
    assert item.get_by_role("button", name="DataFrame").count() == 0
    assert (lab.root_dir / lab.job(job["id"])["destination"] / IMAGE.name).is_file()


def test_three_jobs_with_the_same_prefix_are_distinguishable(
    lab: JupyterLabProcess, page: Any, table_http: RangeHTTPServer
) -> None:
    open_panel(page)
    names = [f"survey_lightcurve_kepler_quarter_sector_{n:03d}" for n in (1, 2, 3)]
    jobs = [
        lab.create_job({"source": str(KEPLER), "name": name, "destination": f"sectors/{name}"})
        for name in names
    ]
    tails, tooltips = [], []
    for job, name in zip(jobs, names, strict=True):
        item = job_item(page, job["id"])
        item.wait_for()
        head = item.locator(".jp-Staging-nameHead")
        tail = item.locator(".jp-Staging-nameTail")
        # The head is cut with an ellipsis at the sidebar's width; the tail shows whole, inside the row.
        assert head.evaluate("(e) => e.scrollWidth > e.clientWidth"), name
        assert head.evaluate("(e) => getComputedStyle(e).textOverflow") == "ellipsis"
        row, box = item.bounding_box(), tail.bounding_box()
        assert box is not None and row is not None and box["width"] > 0
        assert box["x"] + box["width"] <= row["x"] + row["width"]
        tails.append(tail.inner_text())
        tooltips.append(item.get_attribute("title") or "")
        assert name.endswith(tails[-1])
        assert str(KEPLER) in tooltips[-1] and f"sectors/{name}/" in tooltips[-1]
    assert len(set(tails)) == 3, tails
    assert len(set(tooltips)) == 3


def check_error_contrast(page: Any, theme: str, expected: int) -> None:
    """Every error text on the page (at least ``expected`` elements) contrasts >= 4.5:1 with what is
    behind it."""
    selector = ".jp-Staging-errorCode, .jp-Staging-errorMessage, .jp-Staging-notice.jp-mod-error"
    found = page.evaluate(CONTRAST_JS, selector)
    assert len(found) >= expected, found
    weak = [f for f in found if f["ratio"] < MIN_CONTRAST]
    assert not weak, (theme, weak)
    print(theme, sorted({round(f["ratio"], 2) for f in found}))  # noqa: T201 - the figures, with -s


def test_error_text_contrast_in_light_and_dark_themes(
    lab: JupyterLabProcess, page: Any, screenshots: Path, table_http: RangeHTTPServer
) -> None:
    open_panel(page)
    failed = lab.create_job({"source": table_http.url("no-such-table.csv"), "destination": "missing"})
    page.wait_for_selector(f'{PANEL} li[data-job-id="{failed["id"]}"][data-state="failed"]', timeout=30_000)
    # The full error in the job's view too, and a running job for the pictures.
    job_item(page, failed["id"]).get_by_role("button", name="Log").click()
    page.locator(f'.jp-Staging-detailBody[data-job-id="{failed["id"]}"] .jp-Staging-errorFull').wait_for()
    table_http.throttle_bytes_per_s = 150_000
    running = lab.create_job({"source": table_http.url("kplr.fits"), "destination": "running/kepler"})
    page.wait_for_selector(f'{PANEL} li[data-job-id="{running["id"]}"][data-state="running"]', timeout=15_000)
    wait_until(
        lambda: (job_item(page, running["id"]).locator(".jp-Staging-meta").inner_text() or "0%") != "0%", 20
    )
    for theme, light, picture in (
        ("JupyterLab Light", True, "panel-light"),
        ("JupyterLab Dark", False, "panel-dark"),
    ):
        set_theme(page, theme, light)
        page.mouse.move(700, 880)  # off the list: rows as they rest
        check_error_contrast(page, theme, expected=4)  # code and message, in the row and in the job view
        job_item(page, failed["id"]).hover()  # a hovered row has a lighter background
        check_error_contrast(page, theme, expected=4)
        page.locator(PANEL).screenshot(path=str(screenshots / f"{picture}.png"))
        page.screenshot(path=str(screenshots / f"{picture}-page.png"))
        # The form's refusal, on the form's own background.
        page.click(f"{PANEL} .jp-Staging-newButton")
        page.locator(f"{PANEL} form.jp-Staging-form").get_by_role("button", name="Stage").click()
        page.locator(f"{PANEL} .jp-Staging-formError").wait_for()
        check_error_contrast(page, theme, expected=5)
        page.locator(f"{PANEL} form.jp-Staging-form").get_by_role("button", name="Cancel").click()
    set_theme(page, "JupyterLab Light", True)
    lab.request("DELETE", f"jobs/{running['id']}")
    page.evaluate("() => window.jupyterapp.commands.execute('application:close-all')")


def test_clear_finished_hides_finished_jobs_only(
    lab: JupyterLabProcess, page: Any, table_http: RangeHTTPServer
) -> None:
    open_panel(page)
    table_http.throttle_bytes_per_s = 100_000
    running = lab.create_job({"source": table_http.url("survey_table.csv"), "destination": "still/running"})
    page.wait_for_selector(f'{PANEL} li[data-job-id="{running["id"]}"][data-state="running"]', timeout=15_000)
    assert page.locator(f'{PANEL} li[data-state="succeeded"]').count() > 0
    page.click(f"{PANEL} .jp-Staging-clearFinished")
    page.wait_for_selector(f'{PANEL} li[data-state="succeeded"]', state="detached")
    assert page.locator(f'{PANEL} li[data-state="failed"]').count() == 0
    assert job_item(page, running["id"]).count() == 1
    # The server keeps every record; the list is the user's view.
    assert len(lab.request("GET", "jobs").json()["jobs"]) > 1
    lab.request("DELETE", f"jobs/{running['id']}")
    assert not page.errors, page.errors  # type: ignore[attr-defined]
