"""Build configuration: version, OpenMP, show_config()."""

import io
import os
import re
import sys

import pytest

import bnfast


def test_version_is_a_string():
    assert isinstance(bnfast.__version__, str)
    assert re.match(r"^\d+\.\d+", bnfast.__version__), bnfast.__version__


def test_openmp_enabled_returns_bool():
    assert isinstance(bnfast.openmp_enabled(), bool)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OpenMP is required on Linux")
@pytest.mark.skipif(os.environ.get("BNFAST_OPENMP") == "0",
                    reason="built with BNFAST_OPENMP=0")
def test_linux_build_has_openmp():
    assert bnfast.openmp_enabled() is True, (
        "this build has no OpenMP; set BNFAST_OPENMP=0 to build and test without it")


def test_show_config_prints_version_and_openmp(capsys):
    result = bnfast.show_config()
    assert result is None
    printed = capsys.readouterr().out
    assert bnfast.__version__ in printed
    assert "OpenMP" in printed


def test_show_config_to_file(capsys):
    buffer = io.StringIO()
    bnfast.show_config(file=buffer)
    text = buffer.getvalue()
    assert bnfast.__version__ in text and "OpenMP" in text
    assert capsys.readouterr().out == ""


def test_public_api():
    for name in ("moments", "batch_norm_forward", "batch_norm_inference", "batch_norm_backward",
                 "show_config", "openmp_enabled", "__version__"):
        assert hasattr(bnfast, name), name
