"""`make test` runs the suite with `--dist loadgroup`, and the suite relies on it: the tests of an
xdist_group run on one worker, so that their module fixtures and cached steps are made once (the reference
training run, the app's server, the one-device training step). A pytest or pytest-xdist upgrade that drops
the grouping fails here instead of silently doubling that work."""

import pytest


@pytest.mark.xdist_group("xdist-groups-check")
def test_a_grouped_test_is_scheduled_with_its_group(request):
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("only meaningful under pytest-xdist's --dist loadgroup, as `make test` runs")
    assert request.node.nodeid.endswith("@xdist-groups-check"), request.node.nodeid
