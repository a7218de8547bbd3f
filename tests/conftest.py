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
