"""A server that other hosts can reach has a bearer token, unless its operator says the network is trusted."""

import pytest

from pipelines.serve import app_builder, main
from pipelines.serving.guard import TOKEN_ENV, require_token


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_token(host):
    require_token(None, host, allow_no_token=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "head.example.org", None])
def test_a_reachable_address_needs_a_token(host):
    with pytest.raises(ValueError, match=TOKEN_ENV):
        require_token(None, host, allow_no_token=False)
    require_token("a-token", host, allow_no_token=False)
    require_token(None, host, allow_no_token=True)


def test_cli_refuses_every_interface_without_a_token_before_anything_starts(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(tmp_path / "no-export-needed"), "--host", "0.0.0.0"])
    assert exit_.value.code == 2
    assert f"without a bearer token: set {TOKEN_ENV}" in capsys.readouterr().err


def test_serve_config_without_a_token_is_refused_unless_allowed(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ValueError, match="allow_no_token"):
        app_builder({"model": "/exports/best"})
    assert app_builder({"model": "/exports/best", "allow_no_token": True}) is not None
    monkeypatch.setenv(TOKEN_ENV, "a-token")
    assert app_builder({"model": "/exports/best"}) is not None
