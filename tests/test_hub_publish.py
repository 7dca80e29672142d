"""push_to_hub, intercepted at the HfApi boundary (no network): repos, branches, files, messages, cards."""

from __future__ import annotations

import io
from pathlib import Path
from unittest import mock

import pytest
import timm
import torch
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, ModelCard
from huggingface_hub.errors import RevisionNotFoundError

import ccsam_zoo  # noqa: F401
from ccsam_zoo.hub import CheckpointError, push_to_hub, save_pretrained

REPO = "me/ccsam-tiny"
TOKEN = "hf_secret_token_value"


def info(stage: str, top1: float, prototypes: bool) -> dict:
    return dict(
        class_names=["a", "b", "c"], class_counts=[500, 50, 10], shot_thresholds=[100, 20], shot_rule="paper",
        stage=stage, method={"name": "ccsam_adv" if stage == "stage2" else "ccsam", "preset": "official"},
        recipe={"method": "ccsam", "data": {"name": "cifar10_lt", "imbalance_ratio": 100},
                "stage1": {"epochs": 200}, "stage2": {"epochs": 30}},
        metrics={"top1": top1, "many": 0.9, "medium": 0.8, "few": 0.7, "per_class": [0.9, 0.8, 0.7]},
        dataset="cifar10_lt IR100", data_fingerprint="fp",
        prototypes=torch.randn(3, 64) if prototypes else None,
        open_set=None, paper_results=None,
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = timm.create_model("resnet20_cifar", num_classes=3)
    save_pretrained(model, run / "stage1", info=info("stage1", 0.7649, prototypes=False))
    save_pretrained(model, run / "stage2", info=info("stage2", 0.8312, prototypes=True))
    return run


class FakeApi:
    """Records the HfApi calls push_to_hub makes; ``files`` is what each branch holds before the push."""

    def __init__(self, files: dict[str, list[str]] | None = None) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.files = files or {"main": [".gitattributes"]}

    def create_repo(self, repo_id, *, token=None, private=None, exist_ok=False, **kw):
        self.calls.append(("create_repo", dict(repo_id=repo_id, token=token, private=private, exist_ok=exist_ok)))
        return mock.Mock(repo_id=repo_id)

    def create_branch(self, repo_id, *, branch, revision=None, token=None, exist_ok=False, **kw):
        self.calls.append(("create_branch", dict(repo_id=repo_id, branch=branch, token=token, exist_ok=exist_ok)))
        self.files.setdefault(branch, list(self.files.get("main", [])))

    def list_repo_files(self, repo_id, *, revision=None, token=None, **kw):
        self.calls.append(("list_repo_files", dict(repo_id=repo_id, revision=revision, token=token)))
        if revision not in self.files:
            raise RevisionNotFoundError(f"no {revision}", response=mock.Mock())
        return list(self.files[revision])

    def create_commit(self, repo_id, operations, *, commit_message, commit_description=None, token=None,
                      revision=None, **kw):
        ops = list(operations)
        self.calls.append(("create_commit", dict(repo_id=repo_id, operations=ops, commit_message=commit_message,
                                                 commit_description=commit_description, token=token,
                                                 revision=revision)))
        files = set(self.files.setdefault(revision, []))
        files |= {op.path_in_repo for op in ops if isinstance(op, CommitOperationAdd)}
        files -= {op.path_in_repo for op in ops if isinstance(op, CommitOperationDelete)}
        self.files[revision] = sorted(files)
        return f"https://huggingface.co/{repo_id}/commit/{revision}"

    def commits(self) -> list[dict]:
        return [kw for name, kw in self.calls if name == "create_commit"]


def added(commit: dict) -> dict[str, CommitOperationAdd]:
    return {op.path_in_repo: op for op in commit["operations"] if isinstance(op, CommitOperationAdd)}


def deleted(commit: dict) -> list[str]:
    return [op.path_in_repo for op in commit["operations"] if isinstance(op, CommitOperationDelete)]


def card_of(op: CommitOperationAdd) -> ModelCard:
    with op.as_file() as f:
        return ModelCard(f.read().decode())


def test_push_both_stages(run_dir):
    api = FakeApi()
    out = push_to_hub(run_dir, REPO, private=True, token=TOKEN, api=api)
    assert out == {"stage2": f"https://huggingface.co/{REPO}/commit/main",
                   "stage1": f"https://huggingface.co/{REPO}/commit/stage1"}
    names = [name for name, _ in api.calls]
    assert names == ["create_repo", "list_repo_files", "create_commit", "create_branch", "list_repo_files",
                     "create_commit"]
    assert api.calls[0][1] == dict(repo_id=REPO, token=TOKEN, private=True, exist_ok=True)
    assert api.calls[3][1] == dict(repo_id=REPO, branch="stage1", token=TOKEN, exist_ok=True)
    main, stage1 = api.commits()
    assert main["revision"] == "main" and stage1["revision"] == "stage1"
    assert all(c["token"] == TOKEN and c["repo_id"] == REPO for c in api.commits())
    assert main["commit_message"] == "Upload CC-SAM stage 2 (ccsam, cifar10_lt IR100): top-1 83.1%"
    assert stage1["commit_message"] == "Upload CC-SAM stage 1 (ccsam, cifar10_lt IR100): top-1 76.5%"
    assert "83.12" in main["commit_description"]
    assert sorted(added(main)) == ["README.md", "ccsam_zoo.json", "config.json", "model.safetensors",
                                   "per_class_accuracy.png", "prototypes.safetensors"]
    assert sorted(added(stage1)) == ["README.md", "ccsam_zoo.json", "config.json", "model.safetensors",
                                     "per_class_accuracy.png"]
    # files are uploaded from the folder, byte for byte
    op = added(main)["model.safetensors"]
    assert Path(op.path_or_fileobj) == run_dir / "stage2" / "model.safetensors"
    # the stage1 branch starts from main: the stage-2-only prototypes must not linger there
    assert deleted(main) == [] and deleted(stage1) == ["prototypes.safetensors"]
    card2, card1 = card_of(added(main)["README.md"]), card_of(added(stage1)["README.md"])
    assert f'from_pretrained("{REPO}")' in card2.text and f'"hf-hub:{REPO}"' in card2.text
    assert f'from_pretrained("{REPO}", revision="stage1")' in card1.text and f'"hf-hub:{REPO}@stage1"' in card1.text
    assert card2.data.model_name == "ccsam-tiny"
    assert {r.metric_type: r.metric_value for r in card2.data.eval_results}["accuracy"] == 83.12
    assert {r.metric_type: r.metric_value for r in card1.data.eval_results}["accuracy"] == 76.49
    for _, kw in api.calls:  # the token goes to the client and nowhere else
        for key, value in kw.items():
            if key != "token":
                assert TOKEN not in str(value)


def test_push_cleans_stale_files_and_custom_message(run_dir):
    api = FakeApi({"main": [".gitattributes", "README.md", "pytorch_model.bin", "notes/extra.txt", "model.safetensors"],
                   "stage1": [".gitattributes", "prototypes.safetensors", "config.json"]})
    push_to_hub(run_dir, REPO, commit_message="retrain", api=api)
    main, stage1 = api.commits()
    assert main["commit_message"] == stage1["commit_message"] == "retrain"
    assert deleted(main) == ["pytorch_model.bin"]  # user files (notes/) are kept
    assert deleted(stage1) == ["prototypes.safetensors"]


def test_push_single_stage(run_dir, tmp_path):
    import shutil

    shutil.copytree(run_dir / "stage1", tmp_path / "run" / "stage1")
    api = FakeApi()
    out = push_to_hub(tmp_path / "run", REPO, api=api)
    assert list(out) == ["stage1"]
    assert [c["revision"] for c in api.commits()] == ["stage1"]
    api = FakeApi()
    out = push_to_hub(run_dir / "stage2", REPO, api=api)  # a checkpoint folder: its stage picks the branch
    assert list(out) == ["stage2"] and api.commits()[0]["revision"] == "main"


def test_push_refuses_broken_or_empty_runs(run_dir, tmp_path):
    import shutil

    (tmp_path / "empty").mkdir()
    api = FakeApi()
    with pytest.raises(CheckpointError, match="nothing to upload"):
        push_to_hub(tmp_path / "empty", REPO, api=api)
    shutil.copytree(run_dir, tmp_path / "run")
    weights = tmp_path / "run" / "stage1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        push_to_hub(tmp_path / "run", REPO, api=api)
    assert api.calls == [], "nothing may reach the Hub when a checkpoint is broken"


def test_push_with_real_hfapi_methods_patched(run_dir, monkeypatch):
    """Default client (api=None): the real HfApi with its network methods replaced, signatures checked."""
    recorded: dict[str, list] = {}
    for name in ("create_repo", "create_branch", "list_repo_files", "create_commit"):
        fake = mock.create_autospec(getattr(HfApi, name))
        recorded[name] = fake
        monkeypatch.setattr(HfApi, name, fake)
    recorded["create_repo"].return_value = mock.Mock(repo_id=REPO)
    recorded["list_repo_files"].return_value = [".gitattributes"]
    recorded["create_commit"].side_effect = lambda self, repo_id, operations, **kw: (repo_id, kw["revision"])
    out = push_to_hub(run_dir, REPO, token=TOKEN)
    assert out == {"stage2": (REPO, "main"), "stage1": (REPO, "stage1")}
    recorded["create_branch"].assert_called_once_with(mock.ANY, REPO, branch="stage1", exist_ok=True, token=TOKEN)
    assert isinstance(recorded["create_repo"].call_args.args[0], HfApi)


def test_card_bytes_are_valid_yaml(run_dir):
    api = FakeApi()
    push_to_hub(run_dir, REPO, api=api)
    text = io.BytesIO()
    with added(api.commits()[0])["README.md"].as_file() as f:
        text.write(f.read())
    assert text.getvalue().startswith(b"---\n")
    card = ModelCard(text.getvalue().decode())
    assert card.data.library_name == "timm" and "cc-sam" in card.data.tags
