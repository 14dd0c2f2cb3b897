"""The seed tutorial's toy (scripts/mlp_toy.py): an MLP on digits under Adam, Muon and Aurora."""

from __future__ import annotations

import pytest

from tests.test_scripts import load_script
from train.fetch import hub_unreachable_reason


def test_toy_trains_adam_muon_and_aurora_on_digits_and_reports_neuron_deaths(tmp_path, capsys):
    toy = load_script("mlp_toy")
    out = tmp_path / "toy"
    assert (
        toy.main(["--steps", "20", "--diag-every", "5", "--starvation-window", "2", "--width", "96", "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "digits 64→96→96→10" in printed and "20 steps of batch 128" in printed and "seeds [0]" in printed
    lines = [[cell.strip() for cell in line.split("|")[1:-1]] for line in printed.splitlines() if line.startswith("| ")]
    header, rows = lines[0], [dict(zip(lines[0], line)) for line in lines[1:]]
    assert [row["optimizer"] for row in rows] == ["adam", "muon", "aurora"]
    fractions = [title for title in header if title.startswith(("dead", "nearly dead", "starved", "low leverage"))]
    assert len(fractions) == 10  # dead at step 0 and at the end, nearly dead, starved, low leverage; 2 layers each
    for row in rows:
        assert float(row["test acc"]) > 0.5 and all(0.0 <= float(row[title]) <= 1.0 for title in fractions)
    assert rows[0]["dead L1 @0"] == rows[1]["dead L1 @0"]  # the same initialisation for every optimizer
    assert (out / "mlp_toy.md").read_text() in printed
    assert (out / "mlp_toy.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.skipif(hub_unreachable_reason() is None, reason="online: MNIST would be downloaded")
def test_toy_on_mnist_fails_fast_with_a_clear_message_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no cached copy either
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # the toy sets them; restored after the test
        monkeypatch.delenv(name, raising=False)
    toy = load_script("mlp_toy")
    with pytest.raises(toy.ToyDataError, match="not reachable.*--data digits"):
        toy.main(["--data", "mnist", "--out", str(tmp_path / "toy")])
