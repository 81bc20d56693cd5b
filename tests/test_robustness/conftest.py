"""Fixtures of the robustness tests (data faults, training faults)."""
import logging

import pytest
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope

from embedmask_mmdet.datasets import generate_synthetic_coco
from robustness_common import SIZE


@pytest.fixture(scope='module', autouse=True)
def module_scope():
    """Leaves the default scope as it was for the next test modules."""
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield


@pytest.fixture(autouse=True)
def mmdet_scope():
    """The toy Runners switch the default scope to mmengine; the datasets
    and pipelines here are built in mmdet's, as the configs do."""
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield


@pytest.fixture(scope='module')
def synth(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('synth'))
    generate_synthetic_coco(root, num_train=6, num_val=3, seed=0,
                            size=(SIZE, SIZE))
    return root


@pytest.fixture
def logs(monkeypatch):
    """Warnings and errors logged by any mmengine logger (a Runner makes its
    own current logger)."""
    records = []
    handle = MMLogger.handle

    def record(self, rec):
        if rec.levelno >= logging.WARNING:
            records.append(rec.getMessage())
        return handle(self, rec)

    monkeypatch.setattr(MMLogger, 'handle', record)
    return records
