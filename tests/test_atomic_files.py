"""Every file egdnp writes survives a failed save: the old file stays intact, no temporary file is left.

Each writer is made to fail in the middle of its write (an ``OSError`` such as a
full disk raised from inside ``numpy.savez``/``numpy.save``/``json`` output),
after a first successful save of the same path.
"""

from __future__ import annotations

import errno
import os
import stat

import numpy as np
import pytest

from egdnp import atomic_write, nn, optim, reference
from egdnp.optim import egd as egd_module


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device (simulated)")


def _files(folder):
    return sorted(p for p in os.listdir(folder))


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "f.txt"
    with atomic_write(target, "w") as fh:
        fh.write("first")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target, "w") as fh:
            fh.write("second, half written")
            raise RuntimeError("boom")
    assert target.read_text() == "first"
    assert _files(tmp_path) == ["f.txt"]


def test_atomic_write_gives_ordinary_permissions_and_keeps_existing_ones(tmp_path):
    fresh = tmp_path / "fresh.bin"
    with atomic_write(fresh) as fh:
        fh.write(b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o666 & ~umask
    os.chmod(fresh, 0o640)
    with atomic_write(fresh) as fh:
        fh.write(b"y")
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o640


def test_atomic_write_refuses_a_missing_folder_and_a_bad_mode(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        with atomic_write(tmp_path / "nope" / "f.bin"):
            pass
    with pytest.raises(ValueError, match="mode='a'"):
        with atomic_write(tmp_path / "f.bin", "a"):
            pass


def _params():
    return nn.mlp((3, 4, 2)).init(seed=0)


def _assert_write_failure_keeps_old(tmp_path, path, save, monkeypatch, module=np):
    save()
    before = path.read_bytes() if path.is_file() else None
    listing = _files(tmp_path)
    monkeypatch.setattr(module, "savez", _disk_full)
    monkeypatch.setattr(module, "save", _disk_full)
    with pytest.raises(OSError, match="simulated"):
        save()
    monkeypatch.undo()
    if before is not None:
        assert path.read_bytes() == before
    assert _files(tmp_path) == listing, "a temporary file was left behind"


def test_optim_save_state_failure_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    params = _params()
    opt = optim.sgd(0.1, momentum=0.9)
    state = opt.init(params)
    path = tmp_path / "sgd.npz"
    _assert_write_failure_keeps_old(tmp_path, path, lambda: optim.save_state(path, state), monkeypatch)
    loaded = optim.load_state(path, type(state))
    for k in params:
        np.testing.assert_array_equal(loaded.momentum[k], state.momentum[k])


def test_egd_save_failure_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    params = _params()
    opt = egd_module.egd(lr=0.1, evo_interval=2, pop_size=4, sigma=0.01, seed=0)
    state = opt.init(params)
    path = tmp_path / "egd.npz"
    _assert_write_failure_keeps_old(tmp_path, path, lambda: egd_module.save(path, state), monkeypatch)
    assert egd_module.load(path).seed == state.seed


def test_torch_style_egd_save_failure_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    opt = egd_module.EGD(_params(), lr=0.1, evo_interval=2, pop_size=4, sigma=0.01, seed=0)
    path = tmp_path / "egd_obj.npz"
    _assert_write_failure_keeps_old(tmp_path, path, lambda: opt.save(path), monkeypatch)
    opt.load(path)


def test_save_bundle_failure_keeps_the_previous_bundle(tmp_path, monkeypatch):
    folder = tmp_path / "bundle"
    first = {"outputs/y": np.arange(3.0)}
    reference.save_bundle(folder, "demo", first)
    manifest = (folder / "manifest.json").read_bytes()
    arrays = (folder / "arrays.npz").read_bytes()
    monkeypatch.setattr(np, "savez", _disk_full)
    with pytest.raises(OSError, match="simulated"):
        reference.save_bundle(folder, "demo", {"outputs/y": np.ones(5)})
    monkeypatch.undo()
    assert (folder / "manifest.json").read_bytes() == manifest
    assert (folder / "arrays.npz").read_bytes() == arrays
    assert _files(folder) == sorted(["manifest.json", "arrays.npz"])
    np.testing.assert_array_equal(reference.load_bundle(folder).arrays["outputs/y"], first["outputs/y"])


def test_save_bundle_failure_in_the_manifest_keeps_the_previous_bundle(tmp_path, monkeypatch):
    folder = tmp_path / "bundle"
    reference.save_bundle(folder, "demo", {"outputs/y": np.arange(3.0)})
    before = {name: (folder / name).read_bytes() for name in _files(folder)}
    import json

    monkeypatch.setattr(json, "dumps", _disk_full)
    with pytest.raises(OSError, match="simulated"):
        reference.save_bundle(folder, "demo", {"outputs/y": np.ones(5)})
    monkeypatch.undo()
    assert {name: (folder / name).read_bytes() for name in _files(folder)} == before


@pytest.mark.parametrize("suffix", [".npz", ""])
def test_dump_arrays_failure_keeps_the_previous_output(tmp_path, monkeypatch, suffix):
    path = tmp_path / ("port" + suffix)
    reference.dump_arrays(path, {"outputs/y": np.arange(3.0)})
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    monkeypatch.setattr(np, "savez", _disk_full)
    monkeypatch.setattr(np, "save", _disk_full)
    with pytest.raises(OSError, match="simulated"):
        reference.dump_arrays(path, {"outputs/y": np.ones(5)})
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before
