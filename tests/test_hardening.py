"""Nothing silently wrong, nothing lost: hostile or broken configs and weights, concurrent
re-exports, `overwrite`, pushes, empty batches. Every failure is one clear error (the file, key
or field, and the fix). Only the network is mocked."""

import copy
import fcntl
import http.client
import io
import json
import os
import random
import shutil
import stat
import struct
import threading
import warnings
from pathlib import Path

import equinox as eqx
import huggingface_hub
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch

import weights_convert as wc
import zoo
from zoo.cli import main

EXPORT_FILES = ["README.md", "config.json", "model.safetensors"]


@pytest.fixture(scope="module")
def cnn():
    return zoo.load("cnn", framework="equinox", num_classes=10, key=jax.random.key(1))


@pytest.fixture(scope="module")
def exported(cnn, tmp_path_factory):
    return zoo.save_pretrained(cnn, tmp_path_factory.mktemp("export") / "cnn10", name="cnn")


def _copy(exported: Path, tmp_path: Path, name: str = "copy") -> Path:
    return Path(shutil.copytree(exported, tmp_path / name))


def _edit_config(folder: Path, edit) -> Path:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# -- 1. the weights are the truth: config.json is validated and must agree with them ---------


def test_config_disagreeing_with_the_weights_fails_naming_both(exported, tmp_path):
    def seven(config):
        config["num_classes"] = config["zoo"]["num_classes"] = 7
        config["pretrained_cfg"]["num_classes"] = 7

    folder = _edit_config(_copy(exported, tmp_path), seven)
    with pytest.raises(zoo.WeightsError) as e:
        zoo.load(f"local-dir:{folder}")
    message = str(e.value)
    assert "config.json" in message and "num_classes" in message and "7" in message
    assert "model.safetensors" in message and "fc.weight" in message and "10" in message
    # The caller's own num_classes= still re-initialises the head, as documented.
    assert zoo.load(f"local-dir:{folder}", num_classes=7).num_classes == 7


def test_config_in_chans_disagreeing_with_the_stem_fails_naming_both(exported, tmp_path):
    def one_channel(config):
        config["zoo"]["in_chans"] = 1
        config["pretrained_cfg"]["input_size"][0] = 1

    folder = _edit_config(_copy(exported, tmp_path), one_channel)
    with pytest.raises(zoo.WeightsError, match=r"(?s)in_chans.*1.*conv1\.weight.*3"):
        zoo.load(f"local-dir:{folder}")


@pytest.mark.parametrize(
    "field, value",
    [("num_classes", 10**9), ("in_chans", 10**5)],
)
def test_config_allocates_nothing_before_the_weights_are_checked(exported, tmp_path, field, value):
    # A 300-byte config asking for a 477 GiB head must fail on the check, not on the memory.
    def huge(config):
        config["zoo"][field] = value
        if field == "num_classes":
            config["num_classes"] = config["pretrained_cfg"]["num_classes"] = value

    folder = _edit_config(_copy(exported, tmp_path), huge)
    with pytest.raises(zoo.WeightsError, match=rf"config\.json.*{field}"):
        zoo.load(f"local-dir:{folder}")


BAD_FIELDS = [
    ("zoo.num_classes", "x"),
    ("zoo.num_classes", [1]),
    ("zoo.num_classes", 2.5),
    ("zoo.num_classes", True),
    ("zoo.num_classes", -1),
    ("zoo.in_chans", 0),
    ("zoo.in_chans", -1),
    ("zoo.kwargs", "x"),
    ("zoo.kwargs", {"bogus": 1}),
    ("zoo.kwargs", {"drop_rate": "x"}),
    ("zoo.name", 5),
    ("zoo.name", ["a"]),
    ("zoo.format", 99),
    ("zoo", "cnn"),
    ("num_classes", "ten"),
    ("architecture", 5),
    ("pretrained_cfg", []),
    ("pretrained_cfg.input_size", "ab"),
    ("pretrained_cfg.input_size", [0, 32, 32]),
]


@pytest.mark.parametrize("field, value", BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_wrongly_typed_config_fields_are_named(exported, tmp_path, field, value):
    def set_field(config):
        *parents, leaf = field.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value

    folder = _edit_config(_copy(exported, tmp_path), set_field)
    with pytest.raises(zoo.WeightsError) as e:
        zoo.load(f"local-dir:{folder}")
    assert "config.json" in str(e.value) and field.rsplit(".", 1)[-1] in str(e.value)


def test_deeply_nested_config_is_a_clear_error(exported, tmp_path):
    folder = _copy(exported, tmp_path)
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(zoo.WeightsError, match=r"config\.json"):
        zoo.load(f"local-dir:{folder}")


def test_local_dir_honours_every_load_option(exported):
    # dtype=, features_only= and out_indices= reach the model, as with an architecture name.
    half = zoo.load(f"local-dir:{exported}", framework="equinox", dtype=jnp.bfloat16)
    assert half.fc.weight.dtype == jnp.bfloat16
    maps = zoo.load(f"local-dir:{exported}", features_only=True, out_indices=(0,))
    assert [m.shape for m in maps(np.zeros((1, 3, 32, 32), np.float32))] == [(1, 32, 16, 16)]


# -- 2. consistent reads under a concurrent re-export -------------------------------------


def test_concurrent_reexport_readers_get_the_old_or_the_new_export(tmp_path):
    """A reader loops over zoo.load (and, between loads, looks for the files) while the
    writer re-exports two different models to one folder: every read is one of the two
    whole exports, never a mix, and the folder is never missing or incomplete."""
    a = zoo.load("cnn", framework="equinox", key=jax.random.key(1))
    b = zoo.load("cnn", framework="equinox", key=jax.random.key(2), drop_rate=0.5)
    expected = {(float(m.fc.bias[0]), m.config_kwargs()["drop_rate"]) for m in (a, b)}
    target = zoo.save_pretrained(a, tmp_path / "out", name="cnn")
    stop, seen, errors, gaps = threading.Event(), [], [], []

    def read():
        while not stop.is_set():
            try:
                m = zoo.load(f"local-dir:{target}", framework="equinox")
                seen.append((float(m.fc.bias[0]), m.config_kwargs()["drop_rate"]))
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
            for _ in range(50):
                if not all((target / n).is_file() for n in EXPORT_FILES):
                    gaps.append(sorted(os.listdir(tmp_path)))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        writes = 0
        # Bounded: until the reader has done 25 loads while the writer kept re-exporting.
        while len(seen) + len(errors) < 25 and writes < 400:
            zoo.save_pretrained(b if writes % 2 == 0 else a, target, name="cnn", overwrite=True)
            writes += 1
    finally:
        stop.set()
        reader.join()
    assert not errors, errors[:3]
    assert not gaps, gaps[:3]
    assert set(seen) <= expected, set(seen) - expected  # a mix pairs one's config with the other's
    assert sorted(os.listdir(tmp_path)) == ["out"]  # nothing left aside


# -- 3. overwrite replaces only an export -------------------------------------------------


def test_overwrite_refuses_a_folder_that_is_not_an_export(cnn, exported, tmp_path, capsys):
    thesis = tmp_path / "thesis"
    (thesis / "sub").mkdir(parents=True)
    (thesis / "thesis.tex").write_text("years of work")
    (thesis / "sub" / "data.csv").write_text("1,2,3")
    with pytest.raises(
        FileExistsError,
        match=r"(?s)thesis is not a folder written by.*sub/, thesis\.tex.*nothing was deleted",
    ):
        zoo.save_pretrained(cnn, thesis, name="cnn", overwrite=True)
    pth = tmp_path / "cnn.pth"
    torch.save(dict(wc.to_state_dict(cnn)), pth)
    assert main(["convert", str(pth), str(thesis), "--arch", "cnn", "--overwrite"]) == 1
    assert "not a folder written by" in capsys.readouterr().err
    assert (thesis / "thesis.tex").read_text() == "years of work"
    assert (thesis / "sub" / "data.csv").read_text() == "1,2,3"
    # An export with a stray file, or a config.json without the zoo's section, is not one.
    stray = _copy(exported, tmp_path, "stray")
    (stray / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        zoo.save_pretrained(cnn, stray, name="cnn", overwrite=True)
    timm_like = _edit_config(_copy(exported, tmp_path, "timm"), lambda c: c.pop("zoo"))
    with pytest.raises(FileExistsError, match="'zoo' section"):
        zoo.save_pretrained(cnn, timm_like, name="cnn", overwrite=True)
    # A single-file OUT is replaced only if it is a safetensors file.
    text = tmp_path / "notes.safetensors"
    text.write_text("not weights")
    assert main(["convert", str(pth), str(text), "--arch", "cnn", "--overwrite"]) == 1
    assert "not a safetensors file" in capsys.readouterr().err
    assert text.read_text() == "not weights"
    # A real export is replaced.
    again = zoo.save_pretrained(cnn, _copy(exported, tmp_path, "again"), name="cnn", overwrite=True)
    assert sorted(os.listdir(again)) == EXPORT_FILES


# -- 4. strict=False always reports ------------------------------------------------------------


def test_non_strict_loads_warn_with_their_report(cnn, exported, tmp_path):
    sd = dict(wc.to_state_dict(cnn))
    del sd["fc.bias"]
    with pytest.warns(wc.LoadWarning) as w:
        zoo.load("cnn", weights=sd, strict=False)
    assert w[0].message.report.missing_keys == ["fc.bias"]
    with pytest.warns(wc.LoadWarning) as w:
        wc.load_state_dict(zoo.models.SmallCNN(num_classes=10), sd, strict=False)
    assert w[0].message.report.missing_keys == ["fc.bias"]
    folder = _copy(exported, tmp_path)
    safetensors.torch.save_file(sd, folder / "model.safetensors")
    with pytest.warns(wc.LoadWarning) as w:
        zoo.load(f"local-dir:{folder}", strict=False)
    assert w[0].message.report.missing_keys == ["fc.bias"]


# -- 5. torchvision downloads are hash-checked --------------------------------------------


class _Response(io.BytesIO):
    """What urllib's urlopen returns, as far as torch.hub reads it."""

    def info(self):
        headers = http.client.HTTPMessage()
        headers["Content-Length"] = str(len(self.getvalue()))
        return headers

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_torchvision_download_is_hash_checked(cnn, tmp_path, monkeypatch):
    """Only urlopen (the network) is mocked: torch.hub's download, its hash check against the
    prefix in torchvision's file name, and its cache run for real."""
    import torchvision

    buffer = io.BytesIO()
    torch.save(torchvision.models.resnet18().state_dict(), buffer)  # not the published bytes
    urls = []

    def urlopen(request, *args, **kwargs):
        urls.append(request.full_url)
        return _Response(buffer.getvalue())

    monkeypatch.setattr(torch.hub, "urlopen", urlopen)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(zoo.WeightsError, match=r"(?s)resnet18-f37072fd\.pth.*hash"):
        zoo.load("resnet18", weights="IMAGENET1K_V1")
    assert urls == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url]
    cache = tmp_path / "hub" / "checkpoints"
    assert not cache.exists() or os.listdir(cache) == []  # nothing corrupt was cached


# -- 6. push validates the folder and uploads only the export -----------------------------


@pytest.fixture
def fake_hub(monkeypatch):
    seen = {}

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        seen["files"] = {
            str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()
        }
        return "commit-info"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return seen


def test_push_uploads_only_the_exports_files(exported, tmp_path, fake_hub):
    folder = _copy(exported, tmp_path)
    (folder / ".env").write_text("HF_TOKEN=secret")
    (folder / "notes.txt").write_text("draft")
    (folder / "sub").mkdir()
    (folder / "sub" / "data.csv").write_text("1")
    with pytest.warns(UserWarning, match=r"(?s)not uploaded.*\.env.*notes\.txt.*sub"):
        assert zoo.push_to_hub(folder, "org/cnn") == "commit-info"
    assert fake_hub["files"] == {n: (exported / n).read_bytes() for n in EXPORT_FILES}


@pytest.mark.parametrize("damage", ["truncated weights", "unknown architecture", "other shapes"])
def test_push_refuses_a_folder_that_does_not_load(exported, tmp_path, fake_hub, damage):
    folder = _copy(exported, tmp_path)
    if damage == "truncated weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "unknown architecture":
        _edit_config(folder, lambda c: c["zoo"].update(name="resnet19"))
    else:
        other = zoo.load("cnn", framework="equinox", num_classes=3)
        safetensors.torch.save_file(dict(wc.to_state_dict(other)), folder / "model.safetensors")
    with pytest.raises(zoo.WeightsError, match=str(folder)):
        zoo.push_to_hub(folder, "org/cnn")
    assert "files" not in fake_hub  # nothing was uploaded


# -- 7. empty batches and NumPy in the torch face -----------------------------------------


def test_empty_batches_return_empty_outputs_in_both_faces(cnn):
    jface = zoo.JaxModel(cnn, name="cnn")
    empty = np.zeros((0, 3, 32, 32), np.float32)
    assert jface(empty).shape == (0, 10)
    assert jface.forward_features(empty).shape[0] == 0
    logits, after = jface.train_forward(empty)
    assert logits.shape == (0, 10)
    assert bool(jnp.all(after.model.bn1.running_mean == cnn.bn1.running_mean))
    features = zoo.JaxModel(cnn.features_only(), name="cnn")(empty)
    assert [f.shape[:2] for f in features] == [(0, i.num_chs) for i in cnn.feature_info]
    tface = zoo.TorchModel(cnn, name="cnn")
    x = torch.zeros(0, 3, 32, 32)
    with torch.no_grad():
        assert tface(x).shape == (0, 10)
    out = tface(x)  # with grad: a training step's backward runs, with no gradient
    out.sum().backward()
    assert out.shape == (0, 10) and all(p.grad is None for p in tface.parameters())
    before = copy.deepcopy(tface.state_dict())
    tface.train()
    assert tface(x).shape == (0, 10)
    assert all(torch.equal(before[k], v) for k, v in tface.state_dict().items())
    with pytest.raises(ValueError, match="expects 3 input channels"):
        tface(torch.zeros(0, 4, 32, 32))  # an empty batch is still checked


def test_torch_face_refuses_numpy_with_a_clear_error(cnn):
    face = zoo.TorchModel(cnn, name="cnn")
    with pytest.raises(TypeError, match=r"torch\.Tensor.*numpy\.ndarray.*torch\.from_numpy"):
        face(np.zeros((1, 3, 32, 32), np.float32))


# -- 8. one clear error for every broken input --------------------------------------------


def _broken_state_dicts(cnn):
    sd = dict(wc.to_state_dict(cnn))
    sparse = dict(sd, **{"fc.weight": sd["fc.weight"].to_sparse()})
    meta = {k: v.to("meta") for k, v in sd.items()}
    return {
        "int-keyed": ({i: v for i, v in enumerate(sd.values())}, r"key 0 is an int"),
        "sparse": (sparse, r"'fc\.weight' is a sparse.*to_dense"),
        "meta": (meta, r"'conv1\.weight' is a meta tensor"),
    }


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")  # torch's, on load
@pytest.mark.parametrize("kind", ["int-keyed", "sparse", "meta"])
def test_unusable_tensors_are_named_in_files_and_dicts(cnn, tmp_path, kind):
    state_dict, pattern = _broken_state_dicts(cnn)[kind]
    path = tmp_path / f"{kind}.pth"
    torch.save(state_dict, path)
    with pytest.raises(zoo.WeightsError, match=rf"{kind}\.pth.*{pattern}"):
        zoo.load("cnn", weights=path)
    with pytest.raises(zoo.WeightsError, match=pattern):
        zoo.load("cnn", weights=state_dict)


def test_empty_checkpoint_files_say_so(tmp_path):
    for name in ("empty.pth", "empty.safetensors"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(zoo.WeightsError, match=rf"{name} is empty \(0 bytes\)"):
            zoo.load("cnn", weights=tmp_path / name)


@pytest.mark.parametrize(
    "source, pattern",
    [
        ("hf-hub:org/na me", r"'org/na me' is not a valid Hub repository id"),
        ("hf-hub:org/..", r"'org/\.\.' is not a valid Hub repository id"),
        ("hf-hub:org/x@../../etc", r"revision '\.\./\.\./etc'.*'\.\.'"),
        ("hf-hub:org/x@refs/../main", r"revision 'refs/\.\./main'"),
        ("hf-hub:org/x@", r"empty revision"),
    ],
)
def test_bad_hub_ids_and_revisions_are_refused_before_the_hub(
    source, pattern, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(zoo.WeightsError, match=pattern):
        zoo.load(source)


def test_bad_counts_are_usage_errors(cnn, tmp_path, capsys):
    pth = tmp_path / "cnn.pth"
    torch.save(dict(wc.to_state_dict(cnn)), pth)
    for option, value, expected in [
        ("--in-chans", "0", "at least 1"),
        ("--num-classes", "-1", "at least 0"),
    ]:
        assert main(["convert", str(pth), str(tmp_path / "o"), "--arch", "cnn", option, value]) == 2
        err = capsys.readouterr().err
        assert option in err and expected in err
    with pytest.raises(ValueError, match=r"in_chans must be an int >= 1, got 0"):
        zoo.load("cnn", in_chans=0)
    with pytest.raises(ValueError, match=r"num_classes must be an int >= 0, got -1"):
        zoo.load("cnn", num_classes=-1)
    assert not (tmp_path / "o").exists()


# -- 9. exports: permissions, stale partial folders, non-finite weights -------------------


def test_export_files_get_ordinary_permissions(cnn, tmp_path):
    probe = tmp_path / "probe"
    probe.write_text("")  # what this process's umask gives an ordinary new file
    os.mkdir(tmp_path / "probe-dir")
    file_mode = stat.S_IMODE(probe.stat().st_mode)
    folder = zoo.save_pretrained(cnn, tmp_path / "out", name="cnn")
    assert {n: stat.S_IMODE((folder / n).stat().st_mode) for n in EXPORT_FILES} == dict.fromkeys(
        EXPORT_FILES, file_mode
    )
    assert stat.S_IMODE(folder.stat().st_mode) == stat.S_IMODE(
        (tmp_path / "probe-dir").stat().st_mode
    )
    pth = tmp_path / "cnn.pth"
    torch.save(dict(wc.to_state_dict(cnn)), pth)
    assert main(["convert", str(pth), str(tmp_path / "single.safetensors"), "--arch", "cnn"]) == 0
    assert stat.S_IMODE((tmp_path / "single.safetensors").stat().st_mode) == file_mode


def test_stale_partial_exports_are_cleaned_by_the_next_export(cnn, tmp_path):
    # What SIGKILL leaves: a hidden, half-written staging folder (or file) nobody holds.
    dead = tmp_path / ".out.partial-dead0001"
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"\x00" * 100)
    (tmp_path / ".out.old-dead0002" / "x").mkdir(parents=True)
    dead_file = tmp_path / ".single.safetensors.partial-dead0003"
    dead_file.write_bytes(b"\x00" * 100)
    # A live export's staging folder (its writer holds the lock) is not touched.
    live = tmp_path / ".out.partial-live0004"
    live.mkdir()
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        (tmp_path / ".other.partial-dead0005").mkdir()  # another target's: not ours to clean
        zoo.save_pretrained(cnn, tmp_path / "out", name="cnn")
        pth = tmp_path / "cnn.pth"
        torch.save(dict(wc.to_state_dict(cnn)), pth)
        assert (
            main(["convert", str(pth), str(tmp_path / "single.safetensors"), "--arch", "cnn"]) == 0
        )
        assert sorted(os.listdir(tmp_path)) == [
            ".other.partial-dead0005",
            ".out.partial-live0004",
            "cnn.pth",
            "out",
            "single.safetensors",
        ]
    finally:
        os.close(fd)


def test_non_finite_weights_are_refused_at_export(cnn, tmp_path):
    nan = eqx.tree_at(lambda m: m.fc.weight, cnn, cnn.fc.weight.at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match=r"non-finite .*'fc\.weight'"):
        zoo.save_pretrained(nan, tmp_path / "out", name="cnn")
    assert os.listdir(tmp_path) == []


# -- 10. fuzz: config.json and the safetensors header -------------------------------------


def _random_json(rng: random.Random):
    return rng.choice(
        [
            None,
            True,
            False,
            0,
            -1,
            1,
            3,
            10,
            2**31,
            10**12,
            2.5,
            float("nan"),
            float("inf"),
            "",
            "x",
            "cnn",
            "resnet18",
            [],
            [1, 2, 3],
            [3, 32, 32],
            ["a"],
            {},
            {"a": 1},
            {"drop_rate": 0.1},
            [[[[[[]]]]]],
        ]
    )


def _fuzz_config(rng: random.Random, config: dict) -> str:
    config = copy.deepcopy(config)
    kind = rng.randrange(4)
    if kind == 3:  # bytes: flip, cut or nest
        text = json.dumps(config)
        choice = rng.randrange(3)
        if choice == 0:
            i = rng.randrange(len(text))
            return text[:i] + chr(rng.randrange(32, 127)) + text[i + 1 :]
        if choice == 1:
            return text[: rng.randrange(len(text))]
        depth = rng.choice([10, 1000, 50_000])
        return "[" * depth + "]" * depth
    nodes = [config, config["zoo"], config["pretrained_cfg"], config["zoo"]["kwargs"]]
    node = rng.choice(nodes)
    if kind == 0 and node:
        node[rng.choice(list(node))] = _random_json(rng)
    elif kind == 1 and node:
        del node[rng.choice(list(node))]
    else:
        node[rng.choice(["num_classes", "in_chans", "name", "kwargs", "x"])] = _random_json(rng)
    return json.dumps(config)


def _fuzz_header(rng: random.Random, data: bytes) -> bytes:
    (length,) = struct.unpack("<Q", data[:8])
    header, body = json.loads(data[8 : 8 + length]), data[8 + length :]
    kind = rng.randrange(4)
    if kind == 0:  # raw bytes of the header
        raw = bytearray(data[: 8 + length])
        for _ in range(rng.randrange(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw) + body
    if kind == 1:  # the length prefix
        new = rng.choice([0, 1, 7, length - 1, length + 1, len(data), 2**63, 2**64 - 1])
        return struct.pack("<Q", new) + data[8:]
    key = rng.choice(list(header))
    if kind == 2 and key != "__metadata__":
        field = rng.choice(["dtype", "shape", "data_offsets"])
        header[key][field] = rng.choice(
            [
                "F16",
                "BF16",
                "I64",
                "BOOL",
                "C64",
                "F8_E4M3",
                "X",
                [],
                [0],
                [10**12],
                [-1, 2],
                [0, 10**15],
                None,
                3,
                header[key][field][::-1] if isinstance(header[key][field], list) else None,
            ]
        )
    else:
        header[rng.choice([key, "", "module.fc.weight", "__metadata__"])] = _random_json(rng)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def test_fuzz_config_and_header_fail_only_with_clear_errors(exported, tmp_path):
    """Seeded and bounded (~300 loads): each mutated config.json or safetensors header either
    loads or raises zoo.WeightsError; nothing else escapes and nothing crashes."""
    rng = random.Random(19)
    config = json.loads((exported / "config.json").read_text())
    weights = (exported / "model.safetensors").read_bytes()
    folder = _copy(exported, tmp_path)
    escaped, outcomes = [], {"loaded": 0, "refused": 0}
    for i in range(300):
        (folder / "config.json").write_text(
            _fuzz_config(rng, config) if i % 2 == 0 else json.dumps(config)
        )
        (folder / "model.safetensors").write_bytes(
            weights if i % 2 == 0 else _fuzz_header(rng, weights)
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                zoo.load(f"local-dir:{folder}", framework="equinox")
            outcomes["loaded"] += 1
        except zoo.WeightsError as e:
            assert str(e).strip(), "an empty error message"
            outcomes["refused"] += 1
        except Exception as e:  # anything else is a defect
            escaped.append(f"case {i}: {type(e).__name__}: {str(e)[:200]}")
    assert not escaped, "\n".join(escaped[:10])
    assert outcomes["loaded"] and outcomes["refused"], outcomes
