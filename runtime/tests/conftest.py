"""Markers of the runtime tests, registered here too so that ``pytest runtime/tests`` (which
reads runtime/pyproject.toml, not the repository's) knows them."""


def pytest_configure(config):
    config.addinivalue_line("markers", "sanitize: builds the C++ test driver under a sanitizer "
                                       "(run with -m sanitize)")
    config.addinivalue_line("markers", "slow: slow tests (skipped by default)")
