"""The alert rules and dashboard in deploy/monitoring: valid, tested, and about real metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hangar.agent.appmetrics import _usage_text
from hangar.agent.edgemetrics import FIGURES, edge_texts
from hangar.agent.metrics import AgentCollector
from hangar.controlplane.auditverify import AuditVerifier
from hangar.controlplane.metrics import ControlPlaneCollector
from hangar.controlplane.state import ControlPlane
from hangar.net.nftables import Traffic
from hangar.telemetry.metrics import REGISTRY

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian's prometheus) is not installed"
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=MONITORING, capture_output=True, text=True, timeout=120
    )


@promtool
def test_the_alert_rules_are_valid() -> None:
    done = _promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@promtool
def test_the_alert_rules_fire_as_their_tests_say() -> None:
    done = _promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@promtool
def test_the_example_prometheus_config_is_valid() -> None:
    done = _promtool("check", "config", "prometheus.example.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@promtool
def test_a_broken_rule_fails_the_check(tmp_path: Path) -> None:
    """The check above would catch a bad edit: promtool refuses a rule that does not parse."""
    bad = tmp_path / "alerts.yml"
    text = (MONITORING / "alerts.yml").read_text()
    bad.write_text(text.replace("> 3", "> > 3", 1))
    done = subprocess.run(
        ["promtool", "check", "rules", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0


def _exported_names(cp: ControlPlane) -> set[str]:
    names = {family.name for family in REGISTRY.collect()}
    agent = SimpleNamespace(reconciler=SimpleNamespace(machines=list), mesh_handshakes={"p=": 0})
    names |= {f.name for f in AgentCollector(agent).collect()}  # type: ignore[arg-type]
    names |= {f.name for f in ControlPlaneCollector(cp.db).collect()}
    names |= {f.name for f in AuditVerifier(cp).collect()}
    # Each app's figures at the edge, as an edge host sends them for organizations' endpoints.
    exporter = "".join(f'{source}{{proxy="app_x"}} 1\n' for source in FIGURES)
    for text in edge_texts(exporter).values():
        names |= {f.name for f in text_string_to_metric_families(text)}
    # Each machine's traffic, as its host ships it for organizations' endpoints.
    labels = {"org": "o", "app": "a", "machine": "m"}
    traffic = _usage_text("m", labels, Path("/nonexistent"), None, Traffic(1, 1, 1, 1))
    names |= {f.name for f in text_string_to_metric_families(traffic)}
    return names


def _referenced(text: str) -> set[str]:
    found = set(re.findall(r"\bhangar_[a-z_]+", text))
    return {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in found}


def test_rules_and_dashboard_name_only_metrics_hangar_exports(control_plane: ControlPlane) -> None:
    exported = _exported_names(control_plane)
    rules = _referenced((MONITORING / "alerts.yml").read_text())
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    panels = _referenced(exprs)
    assert rules and panels
    assert rules <= exported, rules - exported
    assert panels <= exported, panels - exported
