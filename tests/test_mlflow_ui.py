"""The MLflow UI, in headless Chromium, on a store with two finished training runs: the run comparison
shows their metrics and their rewrites tables, a run's rewrites table renders as a table, the prompt
page lists the versions the runs registered and diffs two, a run's overview shows its description,
best rewrite and registered prompts, and an evaluation's per-example table shows each test row's answers.

Needs Debian's `chromium` (`.ci/run` installs it) and the playwright package (a dev dependency);
playwright's own browser download is not used.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from tests.conftest import DEFAULT_EXPERIMENT

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
# The UI's assistant panel opens on a first visit and covers the page's right side.
CLOSE_ASSISTANT = (
    "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
    "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
)
# The compare page's metrics are two virtualized grids side by side: names, then one value cell per
# run on the same row offset. Returns the values shown for `key` (null while its row is not rendered).
METRIC_VALUES_JS = """key => {
  const name = [...document.querySelectorAll('a[title="Plot chart"]')].find(a => a.textContent.trim() === key);
  if (!name) return null;
  const grids = [...document.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer')];
  const names = name.closest('.ReactVirtualized__Grid__innerScrollContainer');
  const top = name.parentElement.style.top;
  return [...grids[grids.indexOf(names) + 1].children].filter(c => c.style.top === top)
    .sort((a, b) => parseFloat(a.style.left) - parseFloat(b.style.left)).map(c => c.textContent.trim());
}"""
# Scrolls the metrics table to `y` px as its scrollbar does: the values grid scrolls and the names grid
# follows it, one scroll event late, so a second 1 px scroll brings the names to `y` too. Returns the
# table's full height.
SCROLL_METRICS_JS = """async y => {
  const name = document.querySelector('a[title="Plot chart"]');  // any metric row still rendered
  const grids = [...document.querySelectorAll('.ReactVirtualized__Grid')];
  const values = grids[grids.indexOf(name.closest('.ReactVirtualized__Grid')) + 1];
  for (const top of [y, y + 1]) {
    values.scrollTop = top;
    await new Promise(done => setTimeout(done, 100));
  }
  return values.scrollHeight;
}"""

# The prompt comparison's two texts: the baseline, and the compared one as a diff against it, each part
# with its text decoration (a part only the baseline has is struck through).
PROMPT_DIFF_JS = """() => {
  const row = document.querySelector('button[aria-label="Switch sides"]').closest('div').parentElement;
  const [baseline, , diff] = row.children;
  const parts = [...diff.querySelectorAll('span > span')];
  const style = p => getComputedStyle(p).textDecorationLine;
  return {baseline: baseline.textContent, parts: parts.map(p => [p.textContent, style(p)])};
}"""

if CHROMIUM is None:
    pytest.skip("no Chromium installed (apt-get install chromium; .ci/run does)", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[dev]')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(grid_sweep, tmp_path_factory):
    _, client, outputs = grid_sweep
    port = free_port()
    log = (tmp_path_factory.mktemp("mlflow_server") / "server.log").open("w")
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{outputs}/mlflow.db",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, f"mlflow server did not start: {log.name}"
                time.sleep(0.5)
        yield url, client
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker, nothing else
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def page():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # tall enough that the whole comparison fits the screenshot (the page scrolls inside a frame)
        context = browser.new_context(viewport={"width": 1600, "height": 3000})
        context.add_init_script(CLOSE_ASSISTANT)
        yield context.new_page()
        browser.close()


def finished_runs(client):
    exp = client.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id
    runs = client.search_runs([exp], "attributes.status = 'FINISHED'")
    runs = [r for r in runs if MLFLOW_PARENT_RUN_ID in r.data.tags]  # the jobs, not the sweep's parent
    assert len(runs) == 2
    return exp, sorted(runs, key=lambda r: r.info.run_name)


def rewrites(client, run_id, dst):
    table = json.load(open(client.download_artifacts(run_id, "rewrites.json", str(dst))))
    return [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]


def scroll_metrics(page, y: int) -> int:
    height = page.evaluate(SCROLL_METRICS_JS, y)
    page.wait_for_timeout(200)
    return height


def metric_values(page, key: str) -> list[str] | None:
    """The values the comparison shows for `key`, one per run, scrolling the table down to its row."""
    y, height = 0, scroll_metrics(page, 0)
    while y < height:
        if values := page.evaluate(METRIC_VALUES_JS, key):
            return values
        y += 200
        scroll_metrics(page, y)
    return None


def shown(text: str) -> str:
    return " ".join(text.split())


def number(cell: str) -> float | None:
    return None if cell == "null" else float(cell)


def test_run_comparison_shows_both_runs_metrics_and_rewrites(server, page, tmp_path):
    url, client = server
    exp, runs = finished_runs(client)
    ids = [r.info.run_id for r in runs]
    page.goto(f"{url}/#/compare-runs?runs={json.dumps(ids)}&experiments={json.dumps([exp])}")
    page.get_by_text("Comparing 2 Runs").wait_for(timeout=60_000)
    page.get_by_text("dev/accuracy", exact=True).first.wait_for()
    for run in runs:
        assert page.get_by_text(run.info.run_name, exact=True).count() >= 1

    for key in ("dev/best/accuracy", "dev/accuracy", "train/reward", "system/cpu_utilization_percentage"):
        values = metric_values(page, key)
        assert values and len(values) == 2, key
        for value, run in zip(values, runs, strict=True):
            assert float(value) == pytest.approx(run.data.metrics[key], rel=1e-3, abs=1e-3), key

    page.get_by_text("rewrites.json", exact=True).first.click()
    previews = page.locator("pre", has_text='"dev_score"')
    playwright.expect(previews).to_have_count(2, timeout=30_000)  # one rewrites table per run, side by side
    for preview, run in zip(previews.all(), runs, strict=True):
        text = shown(preview.inner_text())
        for row in rewrites(client, run.info.run_id, tmp_path):
            assert shown(json.dumps(row["rewrite"], ensure_ascii=False)) in text
    scroll_metrics(page, 0)  # the metrics from the top, for the record
    page.screenshot(path=str(tmp_path / "compare_runs.png"))
    assert (tmp_path / "compare_runs.png").stat().st_size > 10_000


def test_a_runs_rewrites_table_renders_as_a_table(server, page, tmp_path):
    url, client = server
    exp, runs = finished_runs(client)
    run_id = runs[0].info.run_id
    page.goto(f"{url}/#/experiments/{exp}/runs/{run_id}/artifacts/rewrites.json")
    page.get_by_role("columnheader", name="dev_score").wait_for(timeout=60_000)
    headers = page.get_by_role("columnheader").all_inner_texts()
    assert headers[:5] == ["step", "rewrite", "reward", "dev_score", "split"]
    cells = [row.get_by_role("cell").all_inner_texts() for row in page.get_by_role("row").all()[1:]]
    on_page = [(number(c[0]), shown(c[1]), number(c[2]), number(c[3])) for c in cells]
    table = rewrites(client, run_id, tmp_path)
    assert on_page == [(r["step"], shown(r["rewrite"]), r["reward"], r["dev_score"]) for r in table]
    page.screenshot(path=str(tmp_path / "rewrites_table.png"))


def registered_versions(client) -> dict[int, object]:
    return {int(v.version): v for v in client.search_prompt_versions(DEFAULT_EXPERIMENT)}


def test_the_prompt_page_lists_the_registered_versions_and_diffs_two(server, page, tmp_path):
    url, client = server
    exp, runs = finished_runs(client)
    versions = registered_versions(client)
    # each finished run registered its initial instruction and its best rewrite (one version if the same text)
    for run in runs:
        mine = [v for v in versions.values() if v.tags["run_id"] == run.info.run_id]
        assert {m for v in mine for m in v.tags["method"].split(",")} == {"initial", "train_best"}, run.info.run_name
    page.goto(f"{url}/#/experiments/{exp}/prompts/{DEFAULT_EXPERIMENT}")
    page.get_by_text(f"Viewing version {max(versions)}", exact=True).wait_for(timeout=60_000)
    for number in versions:
        assert page.get_by_text(f"Version {number}", exact=True).count() == 1
    assert page.get_by_text("@ best").count() == 1

    page.locator("label:has(input[value=compare])").click()  # the mode's radio button hides under its label
    heading = page.get_by_text(re.compile(r"^Comparing version \d+ with version \d+$"))
    heading.wait_for()
    baseline, compared = (versions[int(n)].template for n in re.findall(r"\d+", heading.inner_text()))
    page.get_by_text("Text", exact=True).click()  # the diff shows in the Text view (not in Markdown)
    page.wait_for_timeout(500)
    shown = page.evaluate(PROMPT_DIFF_JS)
    assert shown["baseline"] == baseline
    parts = shown["parts"]
    assert "".join(t for t, decoration in parts if "line-through" not in decoration) == compared
    if baseline != compared:
        assert len(parts) > 1  # highlighted: the parts each side has alone
    page.screenshot(path=str(tmp_path / "prompt_compare.png"))


def test_a_runs_overview_shows_its_description_best_rewrite_and_prompts(server, page, tmp_path):
    url, client = server
    exp, runs = finished_runs(client)
    run = runs[0]
    page.goto(f"{url}/#/experiments/{exp}/runs/{run.info.run_id}")
    page.get_by_text("Registered prompts").wait_for(timeout=60_000)
    text = page.inner_text("body")
    assert "Initial instruction: dev accuracy" in text and "Selected: " in text
    assert shown(run.data.tags["prewrite.best_rewrite"]) in shown(text)
    mine = sorted(n for n, v in registered_versions(client).items() if v.tags["run_id"] == run.info.run_id)
    for number in mine:  # listed once the run's prompt links have loaded
        playwright.expect(page.get_by_text(f"{DEFAULT_EXPERIMENT} (v{number})")).to_have_count(1, timeout=30_000)
    page.screenshot(path=str(tmp_path / "run_overview.png"))


def test_an_evaluations_test_examples_show_each_rows_answers_side_by_side(
    server, page, tmp_path, compose_config, grid_sweep
):
    from prewrite.evaluate import evaluate

    url, client = server
    exp, _ = finished_runs(client)
    outputs = grid_sweep[2]
    job = next((outputs / "multiruns").glob("*/0"))  # a training of the sweep, its rewriter exported there
    overrides = ["num_samples=2", "dev_examples=2", "test_examples=3", "max_new_tokens=8", "register_prompts=false"]
    evaluate(compose_config("evaluate", f"rewriter_path={job}", f"paths.outputs_dir={outputs}", *overrides))
    (run,) = client.search_runs([exp], "attributes.run_name = 'eval-sst2_sentences'")
    table = json.load(open(client.download_artifacts(run.info.run_id, "test_examples.json", str(tmp_path))))

    page.goto(f"{url}/#/experiments/{exp}/runs/{run.info.run_id}/artifacts/test_examples.json")
    page.get_by_role("columnheader", name="prewrite_i_answer").wait_for(timeout=60_000)
    assert page.get_by_role("columnheader").all_inner_texts() == table["columns"]
    assert table["columns"][:4] == ["input", "gold", "initial_answer", "initial_accuracy"]
    cells = [row.get_by_role("cell").all_inner_texts() for row in page.get_by_role("row").all()[1:]]
    assert len(cells) == 3  # one row per test example
    for shown_row, row in zip(cells, table["data"], strict=True):
        assert [shown(c) for c in shown_row[:3]] == [shown(str(v)) for v in row[:3]]  # input, gold, an answer
    page.screenshot(path=str(tmp_path / "test_examples.png"))
