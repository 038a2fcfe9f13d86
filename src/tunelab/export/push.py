"""Publish a result to the Hugging Face Hub in one commit, through huggingface_hub: `tunelab push PATH --repo O/N`.

What PATH is says what goes up:
- a finished adapter run (lora, dora): adapter_config.json (its base named as others can find it: a hub id as it
  is, a local base by its folder's or file's name, never this machine's path), adapter_model.safetensors, the
  tokenizer files training saved (their chat template is the one the run trained with) and a model card written
  here (`card.adapter_card`: base, prompting, the run's losses and compare.json's scores, a PEFT example);
- a folder `tunelab merge` wrote: the files its tunelab_merge.json lists, less that record (it holds this machine's
  paths), its card loading the model from the repository instead of the local folder;
- a .gguf file `tunelab export` wrote: the file, its Modelfile and self-check, and its card as README.md.

Everything that can be refused is refused before the first request (exit 2): a repository id that is not
OWNER/NAME, a run that did not finish or holds no adapter, a staged run whose last stage trained its adapter over
weights earlier stages changed (the adapter alone, on its base, is another model: merge the run and push that), an
adapter holding NaN or inf, huggingface_hub's offline mode, no token. The repository (and the branch of `revision`) is created when missing, then one `create_commit`
holds every file. A request that fails is HubRequestFailed (exit 1), one line naming the repository; the token is
never printed.

train.push_to runs the same push at the end of training (api_train.py): `check_push_to` before it (offline mode, the
token), `push_result` after it, which records it in run.json (extra.pushed), where a failure is PushFailed (exit 1)
with the command that pushes the run again.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from tunelab.config import RunConfig
from tunelab.config.flags import PYTHON, Spelling
from tunelab.config.train import check_repo_id
from tunelab.config.validate import over_changed_weights
from tunelab.errors import (
    ConfigError,
    HubRequestFailed,
    PushFailed,
    RunDirError,
    TunelabError,
    article,
    counted,
)
from tunelab.eval.compare import COMPARE_FILE
from tunelab.eval.evaluate import EVAL_FILE
from tunelab.export.card import CARD, adapter_card, card_head, gguf_card_path, shared_name
from tunelab.export.check import check_path
from tunelab.export.modelfile import modelfile_path
from tunelab.models.tokenizer_files import saved_tokenizer
from tunelab.run_info import WEIGHT_METHODS, RunInfo
from tunelab.rundir import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    HEAD_TASKS,
    MERGE_FILE,
    check_result,
    is_run_dir,
    read_info,
    write_info,
)
from tunelab.training.guard import first_non_finite

# run.json's extra: where train.push_to pushed the run ({repo, url, commit}); the launcher of nproc ranks reads it
PUSHED = "pushed"


def _saved(path: Path) -> dict | None:
    """A result file of the run as a JSON object; None where it is missing or cannot be read (the card then gives
    what the others hold)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


@dataclass
class PushResult:
    """What a push committed: the repository, the commit's URL and id, the branch (None: the default one) and the
    files (paths in the repository)."""

    repo: str
    url: str
    commit: str
    revision: str | None
    files: tuple[str, ...]


@dataclass
class Upload:
    """What one push commits: {path in the repository: a local file or the bytes to write}, and what it is, in
    words, for the commit message."""

    files: dict[str, Path | bytes]
    what: str


def check_repo(repo: str, spelling: Spelling = PYTHON) -> str:
    """`repo` if it is a hub model repository id, OWNER/NAME; ConfigError naming the argument otherwise."""
    return check_repo_id(repo, spelling.option("repo"))


def _adapter_upload(run_dir: Path, info: RunInfo, repo: str) -> Upload:
    """The files of a finished adapter run, checked: its adapter finite, its config naming the base as others find it."""
    check_result(run_dir, info)
    weights = run_dir / ADAPTER_WEIGHTS_FILE
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        bad = first_non_finite(load_file(str(weights)).items())
    except (SafetensorError, OSError) as exc:
        raise RunDirError(f"{weights}: the adapter cannot be read ({exc}); nothing was pushed.") from None
    if bad is not None:
        raise RunDirError(
            f"{run_dir}: the adapter holds NaN or inf values (first: {bad} in {ADAPTER_WEIGHTS_FILE}), so it would "
            "break every model it is put on; nothing was pushed. Train the run again (a lower train.lr)."
        )
    config_path = run_dir / ADAPTER_CONFIG_FILE
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{config_path}: cannot be read as JSON ({exc}); nothing was pushed.") from None
    if not isinstance(config, dict):
        raise RunDirError(f"{config_path}: is not a JSON object; nothing was pushed.")
    # a hub base by its id (PEFT loads it from there); any other by its name alone, not this machine's path
    config["base_model_name_or_path"] = shared_name(str(info.base_model))
    compared, evaluated = (_saved(run_dir / name) for name in (COMPARE_FILE, EVAL_FILE))
    scores = compared.get("scores") if compared else None
    files: dict[str, Path | bytes] = {
        ADAPTER_WEIGHTS_FILE: weights,
        ADAPTER_CONFIG_FILE: (json.dumps(config, indent=2) + "\n").encode(),
    }
    files |= saved_tokenizer(run_dir)
    rank = config.get("r") if isinstance(config.get("r"), int) else None
    files[CARD] = adapter_card(info, repo, scores if isinstance(scores, dict) else None, evaluated, rank).encode()
    return Upload(files, f"{info.method} adapter")


def _merged_upload(folder: Path, repo: str) -> Upload:
    """The files of a folder `tunelab merge` wrote: those its record lists (all but the record, for a merge that
    listed none), the files in a tokenizer folder it lists, its card made to load the model from `repo`."""
    try:
        listed = json.loads((folder / MERGE_FILE).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError) as exc:
        raise RunDirError(f"{folder / MERGE_FILE}: cannot be read ({exc}); nothing was pushed.") from None
    names = listed if isinstance(listed, list) else [p.name for p in sorted(folder.iterdir())]
    files: dict[str, Path | bytes] = {
        n: folder / n for n in names if isinstance(n, str) and n != MERGE_FILE and (folder / n).is_file()
    }
    # a tokenizer folder it lists (additional_chat_templates/NAME.jinja), file by file
    files |= {path: file for path, file in saved_tokenizer(folder).items() if path.split("/")[0] in names}
    if not any(n.endswith(".safetensors") for n in files):
        raise RunDirError(f"{folder}: the merged folder holds no *.safetensors weights; merge the run again.")
    card = folder / CARD
    if card.is_file():
        text = card.read_text(encoding="utf-8")
        if text.startswith(card_head("transformers")):  # tunelab's card: its example loads the folder by its name
            text = text.replace(f'from_pretrained("{folder.resolve().name}")', f'from_pretrained("{repo}")')
            text = text.replace(f"\n# {folder.resolve().name}\n", f"\n# {repo.split('/')[1]}\n", 1)
        files[CARD] = text.encode()
    return Upload(files, "merged model")


def _gguf_upload(gguf: Path) -> Upload:
    """An exported GGUF file with its Modelfile, self-check and card (NAME.README.md, pushed as README.md)."""
    card = gguf_card_path(gguf)
    if not card.is_file() or not card.read_text(encoding="utf-8").startswith(card_head("gguf")):
        raise RunDirError(
            f"{gguf}: has no model card tunelab wrote beside it ({card.name}); push a GGUF file that 'tunelab export' "
            "wrote, with the files it wrote beside it."
        )
    files: dict[str, Path | bytes] = {gguf.name: gguf, CARD: card}
    files |= {p.name: p for p in (modelfile_path(gguf), check_path(gguf)) if p.is_file()}
    return Upload(files, "GGUF export")


def collect(path: str | Path, repo: str, spelling: Spelling = PYTHON) -> Upload:
    """What pushing `path` commits, every file checked; RunDirError (nothing sent) for what cannot be pushed."""
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise RunDirError(f"{path}: no such GGUF file.")
        return _gguf_upload(path)
    if path.is_dir() and (path / MERGE_FILE).is_file() and not is_run_dir(path):
        return _merged_upload(path, repo)
    info = read_info(path, spelling=spelling)  # a run that did not finish is refused here, saying how to resume it
    if info.task in HEAD_TASKS:
        raise RunDirError(
            f"{path}: {article(info.task)} run (a head on the model's last token); pushing it is not supported: its "
            "adapter and head are the run's adapter_config.json and adapter_model.safetensors."
        )
    instead = spelling.merge_then_push(str(path), repo)
    if info.method in WEIGHT_METHODS:
        raise RunDirError(
            f"{path}: the run trained whole weights (method {info.method}), so it has no adapter to push; merge it "
            f"into a model folder with its chat template and generation settings, and push that: {instead}."
        )
    stages = info.extra.get("stages")
    if isinstance(stages, list) and (where := over_changed_weights([_stage_start(s) for s in stages])):
        raise RunDirError(
            f"{path}: the run's last stage trained its adapter over weights that earlier stages changed ({where}), "
            "which the adapter does not hold: put on the original base, as PEFT's AutoPeftModelForCausalLM would "
            "put it, it is another model than the one trained and evaluated; nothing was pushed. Merge the run into "
            f"a model folder and push that: {instead}."
        )
    return _adapter_upload(path, info, repo)


def _stage_start(record: object) -> tuple[object, object]:
    """A stage of run.json's extra.stages as over_changed_weights reads it: (method, continue); an entry that is no
    record, (None, None), which counts as a stage over changed weights: refused rather than guessed."""
    return (record.get("method"), record.get("continue")) if isinstance(record, dict) else (None, None)


def hub_token(repo: str, asked: str | None = None) -> str:
    """The token huggingface_hub would send (HF_TOKEN, else the one `hf auth login` saved); TunelabError without one,
    in offline mode, where huggingface_hub makes no request, and where getting it fails (an OIDC exchange of
    HF_OIDC_RESOURCE, an expired login's refresh). `asked`: what asks for the push, opening the message (default:
    'cannot push to REPO'); the token is never printed."""
    from huggingface_hub import constants, get_token

    opening = asked or f"cannot push to {repo}"
    if constants.HF_HUB_OFFLINE:
        raise TunelabError(
            f"{opening}: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, and in offline mode "
            "huggingface_hub makes no request. Unset it to push."
        )
    try:
        token = get_token()
    except Exception as exc:  # whatever its credential helpers raise (OIDC, OAuth refresh, an unreadable token file)
        said = " ".join(str(exc).split())[:300].rstrip(".") or "no message"
        raise TunelabError(
            f"{opening}: huggingface_hub could not get the Hugging Face token ({type(exc).__name__}: {said}). Check "
            "HF_OIDC_RESOURCE where it is set, or log in again with 'hf auth login', or set HF_TOKEN."
        ) from None
    if not token:
        raise TunelabError(
            f"{opening}: no Hugging Face token. Log in with 'hf auth login' (older huggingface_hub: "
            "'huggingface-cli login'), or set HF_TOKEN to a token with write access "
            "(https://huggingface.co/settings/tokens)."
        )
    return token


def check_push_to(config: RunConfig) -> None:
    """Before training, what the push of train.push_to will need from the environment: offline mode off and a token
    (TunelabError naming the option, exit 2), so that a long run does not fail at its end for a missing login. The
    repository's form and the run it fits are config/validate.py's `check_push_to`."""
    repo = config.train.push_to
    if repo is not None:
        hub_token(repo, f"option 'train.push_to' ({repo})")


def push_result(run_dir: str | Path, config: RunConfig, spelling: Spelling = PYTHON) -> str:
    """Push a finished run's result to train.push_to (as `push` does: its refusals first, an adapter holding NaN or inf
    among them), record it in run.json (extra.pushed: the repository, the commit's URL and id), print where and return
    the commit's URL. PushFailed (exit 1) where it fails: the run stays as it is, and the message gives the command
    that pushes it again where that can work (a failed request, a token gone since the start)."""
    repo, private = str(config.train.push_to), config.train.push_private
    try:
        pushed = push(run_dir, repo, private=private, spelling=spelling)
    except TunelabError as exc:
        said = f"training finished and the run is saved in {run_dir}, but it was not pushed to {repo}: {exc}"
        if isinstance(exc, RunDirError):  # the result itself is refused: pushing it again would be refused too
            raise PushFailed(said) from None
        again = (
            shlex.join(["tunelab", "push", str(run_dir), "--repo", repo, *["--private"] * private])
            if spelling.flags
            else f"tunelab.push({str(run_dir)!r}, {repo!r}{', private=True' * private})"
        )
        raise PushFailed(f"{said.rstrip('.')}. Push it again with: {again}") from None
    info = read_info(run_dir)
    info.extra[PUSHED] = {"repo": repo, "url": pushed.url, "commit": pushed.commit}
    write_info(run_dir, info)
    print(f"pushed {counted(len(pushed.files), 'file')} to {repo}: {pushed.url}", flush=True)
    return pushed.url


def _request_errors() -> tuple[type[BaseException], ...]:
    """What a failed hub request raises: huggingface_hub's HTTP errors and the network's (OSError), and the errors of
    the HTTP library it uses (httpx2, httpx or requests, by its version), where loaded."""
    from huggingface_hub.errors import HfHubHTTPError

    found = [HfHubHTTPError, OSError, ValueError]
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        error = getattr(sys.modules.get(module), name, None)
        if isinstance(error, type) and issubclass(error, BaseException):
            found.append(error)
    return tuple(found)


def _failed(exc: BaseException, repo: str, token: str) -> HubRequestFailed:
    """One line naming the repository and what the hub answered, with a hint for the answers a user can fix."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    said = " ".join(str(exc).split()).replace(token, "***")[:400].rstrip(".") or type(exc).__name__
    hint = {
        401: " The token was refused: log in again ('hf auth login') or set HF_TOKEN.",
        403: f" The token may not write to {repo.split('/')[0]}: a read-only token, or not a member of that"
        " organization.",
    }.get(status, "")
    return HubRequestFailed(f"pushing to {repo} failed: {said}.{hint}")


def push(
    path: str | Path,
    repo: str,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
    *,
    spelling: Spelling = PYTHON,
) -> PushResult:
    """Commit `path` (an adapter run, a merged folder or an exported .gguf file, see the module's docstring) to the
    hub model repository `repo` (OWNER/NAME), created when missing (`private`: as a private one; an existing public
    one is then refused before the commit). `revision`: the branch to commit to, created from the default branch when missing (None: the
    default branch). `message`: the commit message. Returns the commit's URL and the files pushed. `spelling`: how
    refusals name the arguments (these, or `tunelab push`'s flags)."""
    check_repo(repo, spelling)
    if revision is not None and (not revision.strip() or revision != revision.strip()):
        raise ConfigError(
            f"{spelling.option('revision')} is {revision!r}; give a branch name, without spaces around it."
        )
    upload = collect(path, repo, spelling)
    token = hub_token(repo)
    from huggingface_hub import CommitOperationAdd, HfApi

    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=data) for name, data in upload.files.items()]
    api = HfApi(token=token)
    try:
        api.create_repo(repo, private=True if private else None, repo_type="model", exist_ok=True)
        if private and not getattr(api.repo_info(repo, repo_type="model"), "private", False):
            asked = "--private" if spelling.flags else "private=True"
            raise TunelabError(
                f"{asked} asks for a private repository, but {repo} exists and is public; nothing was pushed. Make "
                "it private on the hub (its Settings), or push to another repository."
            )
        if revision and not revision.startswith("refs/"):
            api.create_branch(repo, branch=revision, repo_type="model", exist_ok=True)
        info = api.create_commit(
            repo,
            operations,
            commit_message=message or f"Upload {upload.what} with tunelab",
            repo_type="model",
            revision=revision,
        )
    except _request_errors() as exc:
        raise _failed(exc, repo, token) from None
    return PushResult(repo, str(info.commit_url), str(info.oid), revision, tuple(upload.files))
