"""recsys_core.training.checkpoint: atomic save, weights-only load."""

from __future__ import annotations

import pickle

import pytest
import torch

from recsys_core.training.checkpoint import load_checkpoint, save_checkpoint


class NotAWeight:
    """An arbitrary object: a weights-only load must refuse to rebuild it."""

    def __init__(self, payload: str = "x"):
        self.payload = payload


def trained_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_round_trip(tmp_path):
    model, optimizer = trained_state()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "fingerprint": "abc123",
        "epoch": 3,
        "best_metric": 0.25,
        "best_epoch": 2,
        "bad_epochs": 0,
        "history": [{"epoch": 1, "train_loss": 2.5}, {"epoch": 2, "train_loss": 2.0, "val_ndcg@10": 0.25}],
    }
    path = tmp_path / "ckpt" / "nested" / "last.pt"  # parent folders are created
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert set(loaded) == set(state)
    for key, value in state["model"].items():
        assert torch.equal(loaded["model"][key], value)
    for k in ("fingerprint", "epoch", "best_metric", "best_epoch", "bad_epochs", "history"):
        assert loaded[k] == state[k]
    # The loaded optimizer state is usable.
    fresh_model, fresh_opt = trained_state()
    fresh_model.load_state_dict(loaded["model"])
    fresh_opt.load_state_dict(loaded["optimizer"])
    assert all(t.device.type == "cpu" for t in loaded["model"].values())


def test_overwrite_leaves_only_the_new_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.zeros(2)})
    save_checkpoint(path, {"epoch": 2, "w": torch.ones(2)})
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 2 and torch.equal(loaded["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary files left


def test_missing_path_returns_none(tmp_path):
    assert load_checkpoint(tmp_path / "nothing-here.pt") is None


def test_arbitrary_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"epoch": 1, "obj": NotAWeight()}, path)
    # Sanity: a full unpickle would rebuild it.
    assert isinstance(torch.load(path, weights_only=False)["obj"], NotAWeight)
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        load_checkpoint(path)


def test_save_does_not_accept_a_half_written_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})

    def boom(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"partial")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"epoch": 1}  # the previous checkpoint is intact
