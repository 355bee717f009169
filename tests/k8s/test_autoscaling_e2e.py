"""Worker pools scaled by the real HPA controller on the backlog the operator serves, down to zero.

The shared control plane runs without HPAScaleToZero, so the HPA's floor is 1 and the operator
moves the pool between 0 and 1 itself (`WorkersActivated` / `WorkersDeactivated`); the HPA scales
1..N. The scenario itself is in autoscale_scenario.py; test_autoscaling_zero.py runs it with the
gate on.
"""

from __future__ import annotations

import autoscale_scenario as scenario
import pytest

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(600)]


def test_pool_scales_from_zero_on_backlog_and_back(k8s, tmp_path):
    k8s.require("kube-controller-manager", "kwok", "helm")
    out = scenario.run(k8s, tmp_path)
    assert out.hpa_min_replicas == 1  # the API server refused minReplicas 0
    assert out.activation_events >= 1  # woken (and put to sleep) by the operator
    assert out.status["workers"][0]["lastScaleReason"].endswith("-> 0")
    print(f"\nautoscaling (operator activation): {out.summary()}")
