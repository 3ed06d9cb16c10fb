"""The Grafana dashboard (deploy/grafana/prefect-dr.json): its panels query only metrics that
prefect-dr emits, and every panel expression returns data from a real Prometheus that scrapes a
node_exporter textfile collector (fed by --metrics-file) and a Pushgateway (fed by
--pushgateway) after real backups, verifies, a prune, copies and a restore dry run in two
repositories (an S3 bucket and a file:// second copy), which the panels show apart."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, require_program, run_cli

from prefect_dr import metrics
from prefect_dr.storage import url as repo_url

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "prefect-dr.json"
# What Grafana puts in for the variables when "All" is selected (allValue) and the defaults.
VARIABLES = {"instance": ".*", "repository": ".*", "kind": ".*", "backup_interval_hours": "24",
             "verify_interval_hours": "24"}
_METRIC = re.compile(r"\bprefect_dr_[a-z_]+\b")
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")
_SELECTOR = re.compile(r"\bprefect_dr_[a-z_]+\{[^}]*\}")
_BY = re.compile(r"\bby \(([^)]*)\)")


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that queries (rows excluded, nested row panels included)."""
    out = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            out += panel.get("panels", [])
        else:
            out.append(panel)
    return out


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title and refId, expression) of every panel target."""
    return [(f"{p['title']} {t['refId']}", t["expr"]) for p in panels(dashboard)
            for t in p["targets"]]


def substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in expr, expr
    return expr


def emitted() -> set[str]:
    return {f"{metrics.NAMESPACE}_{name}" for name in metrics.HELP}


# ---- the file ----------------------------------------------------------------------------

def test_panels_use_only_metrics_prefect_dr_emits() -> None:
    dashboard = load()
    used: set[str] = set()
    for where, expr in expressions(dashboard):
        names = set(_METRIC.findall(expr))
        assert names, f"{where}: queries no prefect-dr metric"
        assert names <= emitted(), f"{where}: unknown metrics {sorted(names - emitted())}"
        used |= names
    for variable in dashboard["templating"]["list"]:
        query = variable.get("definition") or ""
        assert set(_METRIC.findall(query)) <= emitted(), variable["name"]
    # the dashboard shows every metric prefect-dr emits
    assert used == emitted()


def test_dashboard_shape() -> None:
    dashboard = load()
    assert dashboard["uid"] == "prefect-dr" and dashboard["title"]
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "instance", "repository", "kind"} <= names
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["description"] and set(panel["gridPos"]) == {"h", "w", "x", "y"}
        for target in panel["targets"]:
            used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
            assert used <= names, (panel["title"], used - names)
    titles = " ".join(p["title"].lower() for p in panels(dashboard))
    for topic in ("backup: age", "verify: age", "staleness", "failing", "duration", "size",
                  "compression", "restore", "prune"):
        assert topic in titles, topic


def test_every_panel_filters_and_groups_by_repository() -> None:
    """Every metric a panel queries carries the repository label (every command that opens a
    repository), so every selector filters by the variable and every aggregation keeps the
    label: two repositories (the primary and a second copy) never merge into one series."""
    dashboard = load()
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "repository"]
    assert variable["multi"] and variable["includeAll"] and variable["allValue"] == ".*"
    match = _LABEL_VALUES.match(variable["definition"])
    assert match and match["label"] == "repository"
    assert variable["query"]["query"] == variable["definition"]
    for where, expr in expressions(dashboard):
        selectors = _SELECTOR.findall(expr)
        assert selectors and len(selectors) == len(_METRIC.findall(expr)), (where, expr)
        for selector in selectors:
            assert 'repository=~"$repository"' in selector, (where, selector)
            assert 'instance=~"$instance"' in selector, (where, selector)
        groupings = _BY.findall(expr)
        assert groupings, (where, expr)
        for grouping in groupings:
            assert "repository" in {g.strip() for g in grouping.split(",")}, (where, expr)
    for panel in panels(dashboard):
        for target in panel["targets"]:
            if target.get("format") != "table":
                assert "{{repository}}" in target["legendFormat"], panel["title"]


# ---- real Prometheus ---------------------------------------------------------------------

def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout}s")


class Servers:
    """Pushgateway, node_exporter (textfile collector only) and Prometheus scraping both, all
    on loopback, started and stopped by the test."""

    def __init__(self, tmp: Path) -> None:
        self.textfile_dir = tmp / "textfile"
        self.textfile_dir.mkdir()
        self.procs: list[subprocess.Popen[bytes]] = []
        ports = {name: free_port() for name in ("pushgateway", "node", "prometheus")}
        self.pushgateway = f"http://127.0.0.1:{ports['pushgateway']}"
        self.prometheus = f"http://127.0.0.1:{ports['prometheus']}"
        node = f"127.0.0.1:{ports['node']}"
        config = tmp / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: node\n    static_configs: [{{targets: ['{node}']}}]\n"
            "  - job_name: pushgateway\n    honor_labels: true\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{ports['pushgateway']}']}}]\n")
        # in memory: Debian's build persists to /var/lib/prometheus/pushgateway.data by
        # default, which would bring every earlier run's groups (and their data) back
        self._start([require_program("prometheus-pushgateway"), "--persistence.file=",
                     f"--web.listen-address=127.0.0.1:{ports['pushgateway']}"],
                    self.pushgateway + "/-/ready")
        self._start([require_program("prometheus-node-exporter"), f"--web.listen-address={node}",
                     "--collector.disable-defaults", "--collector.textfile",
                     f"--collector.textfile.directory={self.textfile_dir}"],
                    f"http://{node}/metrics")
        self._start([require_program("prometheus"), f"--config.file={config}",
                     f"--storage.tsdb.path={tmp / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{ports['prometheus']}"],
                    self.prometheus + "/-/ready")

    def _start(self, argv: list[str], ready: str) -> None:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        _wait_ready(ready, proc)

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = self.prometheus + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        body = json.loads(urllib.request.urlopen(url, timeout=10).read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def label_values(self, label: str, selector: str) -> list[str]:
        url = (self.prometheus + f"/api/v1/label/{label}/values?"
               + urllib.parse.urlencode({"match[]": selector}))
        return json.loads(urllib.request.urlopen(url, timeout=10).read())["data"]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture()
def servers(tmp_path: Path) -> Iterator[Servers]:
    s = Servers(tmp_path)
    yield s
    s.stop()


@pytest.mark.integration
def test_every_panel_returns_data_from_real_prometheus(clone: dict[str, str], servers: Servers,
                                                       tmp_path: Path) -> None:
    # the clone's own database (a backup of the shared one may meet another run's lock) and
    # prefix; a second repository on files: the copy target and a repository of its own runs
    env = clone
    second = tmp_path / "second-copy"
    second.mkdir()  # a file repository must exist (an unmounted share)
    primary_url = str(repo_url.from_s3_settings(env["PREFECT_DR_S3_BUCKET"],
                                                env["PREFECT_DR_S3_PREFIX"]))
    second_url = str(repo_url.parse(f"file://{second}"))
    common = ["--metrics-file", str(servers.textfile_dir / "prefect-dr.prom"),
              "--pushgateway", servers.pushgateway, "--metrics-instance", "dashboard-test"]
    on_second = ["--repository", second_url]
    for args in (["backup", "--copy-to", second_url], ["backup", "--kind", "config-only"],
                 ["verify", "--latest"], ["prune", "--keep-last", "5"],
                 ["copy", "--all", "--to", second_url],
                 [*on_second, "verify", "--latest"],
                 [*on_second, "backup", "--kind", "config-only"],
                 [*on_second, "prune", "--keep-last", "5"]):
        proc = run_cli([*common, *args], env)
        assert proc.returncode == 0, (args, proc.stderr)
    # a restore dry run records the restore's metrics
    restore = run_cli([*common, "restore", "--latest", "--dry-run"], env)
    assert restore.returncode in (0, 1), restore.stderr
    # both sources scraped: the textfile through node_exporter, the groups on the Pushgateway
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = {r["metric"].get("job") for r in servers.query(
            'prefect_dr_last_run_timestamp_seconds{command="restore"}')}
        if jobs >= {"node", "prefect-dr"}:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"Prometheus has not scraped both sources: {jobs}")
    empty = []
    for where, expr in expressions(load()):
        result = servers.query(substitute(expr))
        if not result:
            empty.append(where)
        else:  # both sources show up under their own instance
            instances = {r["metric"].get("instance") for r in result}
            assert "dashboard-test" in instances, (where, instances)
    assert empty == [], f"panels without data: {empty}"
    variables = {v["name"]: v for v in load()["templating"]["list"]}
    for name, variable in variables.items():
        match = _LABEL_VALUES.match(variable.get("definition") or "")
        if match:
            values = servers.label_values(match["label"], match["selector"])
            assert values, name
    kinds = servers.label_values("kind", 'prefect_dr_last_run_timestamp_seconds{command="backup"}')
    assert set(kinds) == {"full", "config-only"}
    # the repository variable lists both repositories, and the panels keep them apart
    match = _LABEL_VALUES.match(variables["repository"]["definition"])
    assert match
    assert set(servers.label_values(match["label"], match["selector"])) == {primary_url,
                                                                           second_url}
    by_title = {p["title"]: p for p in panels(load())}
    for title in ("Last successful backup: age", "Last successful verify: age",
                  "Newest verification", "Backup staleness against the schedule",
                  "Backup size by stage", "Prune"):
        for target in by_title[title]["targets"]:
            result = servers.query(substitute(target["expr"]))
            repositories = {r["metric"].get("repository") for r in result
                            if r["metric"].get("instance") == "dashboard-test"}
            assert repositories == {primary_url, second_url}, (title, repositories)
    # choosing one repository leaves only its series (Grafana puts in the value escaped as a
    # regular expression inside a PromQL string)
    age = by_title["Last successful backup: age"]["targets"][0]["expr"]
    one = substitute(age.replace("$repository", re.escape(second_url).replace("\\", "\\\\")))
    assert {(r["metric"]["repository"], r["metric"]["kind"]) for r in servers.query(one)} == {
        (second_url, "config-only")}
