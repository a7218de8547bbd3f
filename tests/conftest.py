"""Test-session fixtures shared by every test file."""
import logging

import pytest


@pytest.fixture(autouse=True)
def _drop_log_handlers_on_closed_streams():
    """A runner built inside a test that captures output (``capsys``) gives mmengine's
    logger a handler writing to that capture stream, and the logger stays mmengine's
    current one after the test, when pytest has closed the stream: the next ``print_log``
    of another test then writes "--- Logging error ---" tracebacks to its stderr. After
    every test, handlers whose stream is closed are removed (no user-facing code path has
    such a handler: it is the tests' capture that closes it)."""
    yield
    from mmengine.logging import MMLogger
    for logger in list(MMLogger._instance_dict.values()):
        for handler in list(logger.handlers):
            stream = getattr(handler, 'stream', None)
            if isinstance(handler, logging.StreamHandler) and getattr(stream, 'closed',
                                                                        False):
                logger.removeHandler(handler)


@pytest.fixture(autouse=True, scope='session')
def _one_runner_name_per_second():
    """mmengine names a runner's logger, message hub and visualizer
    ``<experiment_name or config file name>_<start time to the second>`` and hands a runner
    started within the same second as an earlier one of the same name the earlier one's
    (its log lines then go to the other run's file, and a test reading the new work dir's
    log finds none). In the tests, a runner whose name would be the previous runner's in
    the same second waits for the next second (the tools build one runner per process)."""
    import functools
    import os.path as osp
    import time

    from mmengine.runner import Runner
    original = Runner.__init__
    last = {'key': None}

    def name_of(kwargs):
        name = kwargs.get('experiment_name')
        if name is None:
            filename = getattr(kwargs.get('cfg'), 'filename', None)
            name = osp.splitext(osp.basename(filename))[0] if filename else ''
        return name

    @functools.wraps(original)
    def init(self, *args, **kwargs):
        name = name_of(kwargs)
        if (name, time.strftime('%Y%m%d_%H%M%S')) == last['key']:
            time.sleep(1.02 - time.time() % 1)
        try:
            return original(self, *args, **kwargs)
        finally:
            last['key'] = (name, time.strftime('%Y%m%d_%H%M%S'))

    Runner.__init__ = init
    yield
    Runner.__init__ = original
