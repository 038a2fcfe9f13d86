"""A federation's records in its run directory, its plot, and the HTML section of `tunelab report` about it.

    federated.json   the federation's state after each round, which --resume reads: {"rounds_done", "rounds"
                     (federated.rounds), "local_steps", "strategy" (fedavg or fedprox, + DP with DP), "clients"
                     (every client's name), "warmup_steps" (the warmup the federation started with, which a
                     --resume keeps), "elapsed_s" (the rounds' seconds so far), "accountant" (the DP accountant's
                     state; null without DP), "history" (each round's report, below), with an eval set
                     "base_eval_loss" (the base model's, before round 1, which keep_best's last word is told
                     against) and with train.keep_best "best" (the round and eval loss of the result kept)};
                     each round's report (rounds.py RoundReport): {"round", "sampled" (the clients asked),
                     "applied", "note" (why not applied), "epsilon", "clients" (one entry per client asked,
                     below), "not_asked" (the names federated.fraction < 1 left out)};
                     each client's entry (rounds.py ClientRound): {"client", "node_id", "status" (ok, failed or
                     skipped), "reason", "examples", "train_loss", "steps", "tokens", "seconds", "bytes_sent",
                     "bytes_received", "dtype" (what it trained in), "rates" (lr, and lr_B with LoRA+, its round's
                     first local step ran at)}
    metrics.jsonl    one record per round: {"step": round, "round", "loss" (the clients' example-weighted train
                     loss), "eval_loss" (the global adapter on the server's eval set), "applied" (the round's
                     average replaced the global adapter), "clients_used", "clients_failed" (an error, or no reply
                     in time), "clients_skipped" (a reply whose adapter does not fit: other keys or shapes, or
                     none), "bytes_sent", "bytes_received", "epsilon", "not_asked" (the clients federated.fraction
                     < 1 left out of the round), "elapsed_s" (the federation's seconds so far)}, before round 1
                     {"step": 0, "round": 0, "eval_loss"} of the base model, and one per client and round:
                     {"step": round, "round", "client", "client_loss", "status", "examples", "tokens", "lr" and,
                     with LoRA+, "lr_B" (the rates its round's first local step ran at), "bytes_sent",
                     "bytes_received", "reason"}; "step" is the round, so the tools that read metrics.jsonl
                     (plots, report) draw the federation's curves as they draw a training run's
    federated.png    eval loss of the global adapter and each client's train loss by round, the learning rate the
                     clients' rounds started at (lr, and lr_B with LoRA+, on a log axis then), and the bytes moved
    checkpoints/round-NNNNNNN/adapter_model.safetensors, round.json
                     the global adapter after round N (the last two kept) with its sha256 and the state after round
                     N, written before federated.json names round N: a server stopped at any point resumes from a
                     round whose adapter is on disk, and a damaged one falls back to the round before
                     (checkpoints.py)

Nothing here imports Flower or torch: a report or plot of a federated run needs neither.
"""

from __future__ import annotations

import html
import io
import json
import re
from json.decoder import scanstring
from pathlib import Path

from tunelab.atomic import write_json
from tunelab.config.flags import CLI, Spelling
from tunelab.errors import RunDirError, counted
from tunelab.training.metrics import plot_text, rate_curves, read_metrics

STATE_FILE = "federated.json"
PLOT_FILE = "federated.png"


class DamagedState(RunDirError):
    """federated.json is not JSON, or holds a field of another kind than tunelab federate writes there."""


def state_fix(spelling: Spelling = CLI) -> str:
    """What to do about a damaged federated.json, naming the commands, resume and overwrite as `spelling` does."""
    writer, reader = (
        ("tunelab federate", "tunelab report") if spelling.flags else ("tunelab.federate()", "tunelab.report()")
    )
    return (
        f"It is the federation's record of its rounds, which {writer} writes after every round and its "
        f'{spelling.resume} and {reader} read: restore it (checkpoints/round-N/round.json holds, under "state", the '
        f"record as it stood after round N), or run the federation again with {spelling.overwrite}."
    )


def read_state(run_dir: str | Path, spelling: Spelling = CLI) -> dict | None:
    """federated.json (None where there is none); DamagedState naming its line and field where it is not JSON or a
    field its readers use is missing or of another kind (`state_problem`), and the fix as `spelling` names it."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    text = path.read_bytes().decode("utf-8", errors="replace")
    try:
        state = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DamagedState(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg}). {state_fix(spelling)}") from None
    if problem := state_problem(state):
        steps, what = problem
        raise DamagedState(f"{path}, line {_line(text, steps)}: {what}. {state_fix(spelling)}")
    return state


# The fields of federated.json its readers take as they are (server.py writes them; rounds.py RoundReport and
# ClientRound the entries of history), by kind; others are read with a default.
_KINDS = {
    "count": ("a whole number >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "text": ("a text", lambda v: isinstance(v, str)),
    "text?": ("a text or null", lambda v: v is None or isinstance(v, str)),
    "number?": ("a number or null", lambda v: v is None or (isinstance(v, int | float) and not isinstance(v, bool))),
    "texts": ("a list of texts", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "list": ("a list", lambda v: isinstance(v, list)),
}
_STATE = {"rounds_done": "count", "rounds": "count", "local_steps": "count", "strategy": "text", "clients": "texts"}
_STATE |= {"history": "list"}
_ROUND = {"round": "count", "clients": "list"}
_CLIENT = {"client": "text", "status": "text", "reason": "text?", "train_loss": "number?", "examples": "count"}
_CLIENT |= {"bytes_sent": "count", "bytes_received": "count"}


def _fields(record: dict, spec: dict[str, str], steps: tuple, where: str) -> tuple[tuple, str] | None:
    for key, kind in spec.items():
        what, fits = _KINDS[kind]
        if key not in record:
            return steps + (key,), f"{where}field '{key}' is missing"
        if not fits(record[key]):
            shown = json.dumps(record[key], ensure_ascii=False)
            shown = shown if len(shown) <= 60 else f"{shown[:57]}..."
            return steps + (key,), f"{where}field '{key}' is {shown}; it must be {what}"
    return None


def state_problem(state) -> tuple[tuple, str] | None:
    """(the JSON path of the first unusable field, what is wrong with it) of a parsed federated.json; None when every
    field its readers take as it is has its kind. Entries are named from 1 ('history entry 2, clients entry 1')."""
    if not isinstance(state, dict):
        return (), "not a JSON object"
    if problem := _fields(state, _STATE, (), ""):
        return problem
    for r, report in enumerate(state["history"]):
        where = f"history entry {r + 1}"
        if not isinstance(report, dict):
            return ("history", r), f"{where} is not an object"
        if problem := _fields(report, _ROUND, ("history", r), f"{where}, "):
            return problem
        for c, client in enumerate(report["clients"]):
            at = ("history", r, "clients", c)
            if not isinstance(client, dict):
                return at, f"{where}, clients entry {c + 1} is not an object"
            if problem := _fields(client, _CLIENT, at, f"{where}, clients entry {c + 1}, "):
                return problem
    return None


_SPACE = re.compile(r"\s*")


def _line(text: str, steps: tuple) -> int:
    """The line of `text` (JSON) where the value at `steps` (keys and list indices) starts; where a key is missing,
    the line of the object that lacks it."""
    decoder, at = json.JSONDecoder(), _SPACE.match(text).end()

    def after(pos: int) -> int:  # past a value's trailing space and comma
        pos = _SPACE.match(text, pos).end()
        return _SPACE.match(text, pos + 1).end() if text.startswith(",", pos) else pos

    try:
        for step in steps:
            if isinstance(step, int) and text.startswith("[", at):
                pos = _SPACE.match(text, at + 1).end()
                for _ in range(step):
                    pos = after(decoder.raw_decode(text, pos)[1])
            elif isinstance(step, str) and text.startswith("{", at):
                pos = _SPACE.match(text, at + 1).end()
                while text.startswith('"', pos):
                    key, pos = scanstring(text, pos + 1)
                    pos = _SPACE.match(text, _SPACE.match(text, pos).end() + 1).end()  # past the colon
                    if key == step:
                        break
                    pos = after(decoder.raw_decode(text, pos)[1])
                else:
                    break  # the key is missing: the object's line
            else:
                break
            at = pos
    except (ValueError, IndexError):  # a text json.loads read whole walks whole; kept safe all the same
        pass
    return text.count("\n", 0, at) + 1


def write_state(run_dir: str | Path, state: dict) -> Path:
    return write_json(Path(run_dir) / STATE_FILE, state)


def all_rounds_done(run_dir: str | Path, rounds: int, spelling: Spelling = CLI) -> str | None:
    """Why --resume has nothing to do when federated.json already counts `rounds` rounds (None while some are
    left); `spelling`: how the caller names resume and overwrite."""
    state = read_state(run_dir, spelling)
    if state is None or int(state["rounds_done"]) < rounds:
        return None
    return (
        f"{run_dir}: all {rounds} rounds are done and this config asks for {rounds}, so {spelling.resume} has nothing "
        "to continue. To train on, ask for more rounds (federated.rounds); to score it, use "
        f"{'tunelab compare or tunelab eval' if spelling.flags else 'tunelab.compare() or tunelab.evaluate()'}; to "
        f"federate it again from the start, drop {spelling.resume} and give {spelling.overwrite}."
    )


def nothing_applied(history: list[dict], spelling: Spelling = CLI) -> str | None:
    """What to say when no round of the federation applied an update (every one with too few usable client
    updates): its adapter is still the untrained one, which keep_best's 'it is the result' alone does not tell. Each
    client that failed is named with its error, as the round lines (and, in the simulation, the clients' tracebacks,
    which Ray folds into one when they repeat across workers) may not show them all."""
    if not history or any(report.get("applied") for report in history):
        return None
    n = len(history)
    lost = lost_clients(history)
    why = f"; {'; '.join(lost)}" if lost else ": see the round lines"
    return (
        f"none of the {n} round{'' if n == 1 else 's'} applied an update (each had fewer usable client "
        f"updates than federated.min_clients{why}), so the saved adapter is the untrained one and answers as the base "
        f"model does. Fix what the clients failed on and federate again ({spelling.overwrite}), or {spelling.resume} "
        "with more federated.rounds."
    )


ANSI = re.compile(r"\x1b\[[0-9;]*m")
FLOWER_REASON = re.compile(r"<class '([^']+)'>:<'(.*)'>", re.DOTALL)


def error_line(reason: str | None) -> str:
    """A failed client's reason in one line without terminal colours ('' for none). Our ClientApp replies with the
    error's message (client.py: a TunelabError's, or `Type: message`): its first line, which names the error (a
    message of several lines ended with its last, which did not). A reason Flower makes (a ClientApp that did not
    load, a Ray worker that died: `<class 'X'>:<'MESSAGE'>`, often a traceback) says what happened in its last line."""
    text = ANSI.sub("", reason or "").strip()
    flower = FLOWER_REASON.fullmatch(text)
    if flower:
        lines = [line.strip() for line in flower[2].splitlines() if line.strip()]
        if len(lines) == 1:
            return f"{flower[1]}: {lines[0]}"
        return lines[-1] if lines else flower[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    return lines[-1] if "Traceback (most recent call last)" in text else lines[0]


def by_name(name: str) -> list:
    """A client's place in a listing: by name, its numbers as numbers (client-2 before client-10)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name)]


def _rounds(numbers: list[int]) -> str:
    """'round 3', 'rounds 1-4', 'rounds 1-2, 5'."""
    spans: list[list[int]] = []
    for n in sorted(set(numbers)):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)
    return f"round{'s' if len(numbers) > 1 else ''} {text}"


def lost_clients(history: list[dict], after: int = 0) -> list[str]:
    """One entry per client whose update a round after round `after` lost (failed: an error, or no reply in time;
    skipped: an adapter that does not fit), by name: the rounds, and its first loss's error line (every reason
    stays in federated.json)."""
    lost: dict[str, tuple[str, str, list[int]]] = {}
    for report in history:
        if int(report["round"]) <= after:
            continue
        for c in report.get("clients", []):
            if c.get("status") in ("failed", "skipped"):
                first = lost.setdefault(c["client"], (c["status"], error_line(c.get("reason")) or c["status"], []))
                first[2].append(int(report["round"]))
    return [
        f"{name} ({status} in {_rounds(rounds)}): {line}"
        for name, (status, line, rounds) in sorted(lost.items(), key=lambda item: by_name(item[0]))
    ]


def round_records(report: dict, eval_loss: float | None, elapsed_s: float) -> list[dict]:
    """metrics.jsonl records of one round (a RoundReport as a dict): the round's, then one per client."""
    used = [c for c in report["clients"] if c["status"] == "ok" and c["train_loss"] is not None]
    weight = sum(c["examples"] for c in used)
    loss = sum(c["train_loss"] * c["examples"] for c in used) / weight if weight else None
    r = report["round"]
    records = [
        {
            "step": r,
            "round": r,
            "loss": loss,
            "eval_loss": eval_loss,
            "applied": report["applied"],
            "clients_used": len(used),
            "clients_failed": sum(c["status"] == "failed" for c in report["clients"]),
            "clients_skipped": sum(c["status"] == "skipped" for c in report["clients"]),
            "bytes_sent": sum(c["bytes_sent"] for c in report["clients"]),
            "bytes_received": sum(c["bytes_received"] for c in report["clients"]),
            "epsilon": report["epsilon"],
            "not_asked": report.get("not_asked", []),
            "elapsed_s": round(elapsed_s, 1),
        }
    ]
    for c in report["clients"]:
        records.append(
            {
                "step": r,
                "round": r,
                "client": c["client"],
                "client_loss": c["train_loss"],
                "status": c["status"],
                "examples": c["examples"],
                "tokens": c.get("tokens", 0),
                # lr (and lr_B): the rates its first local step ran at (none in a federated.json from before them)
                **(c["rates"] if isinstance(c.get("rates"), dict) else {}),
                "bytes_sent": c["bytes_sent"],
                "bytes_received": c["bytes_received"],
                "reason": c["reason"],
            }
        )
    return records


def last_train_loss(history: list[dict]) -> tuple[float | None, int | None]:
    """The clients' train loss (weighted by examples) of the last round whose average was applied to the global
    adapter, and that round: a round no client trained in, or whose updates were too few to apply, left the adapter
    as it was, so run.json's final_loss stays that of the round that made it. (None, None) before any such round."""
    for report in reversed(history):
        loss = round_records(report, None, 0.0)[0]["loss"]
        if report.get("applied") and loss is not None:
            return loss, report["round"]
    return None, None


def trained_tokens(history: list[dict]) -> int:
    """The real tokens every client trained on over the rounds (those whose round ended ok), run.json's `tokens`
    as tunelab train counts its own; a round trained again after a resume is counted once."""
    return sum(c.get("tokens", 0) for report in history for c in report.get("clients", []) if c.get("status") == "ok")


def client_dtypes(history: list[dict]) -> dict[str, str]:
    """What each client trained in, from the rounds' reports: run.json's dtype is the server's, and a client on
    model.dtype auto picks its own host's (bfloat16 on a GPU, float32 on the CPU). A client seen in several dtypes
    (another host after a resume) has them all, in the order they came; a client that did not say is left out."""
    seen: dict[str, list[str]] = {}
    for report in history:
        for c in report.get("clients", []):
            if c.get("status") == "ok" and c.get("dtype"):
                kinds = seen.setdefault(c["client"], [])
                if c["dtype"] not in kinds:
                    kinds.append(c["dtype"])
    return {name: ", ".join(kinds) for name, kinds in sorted(seen.items())}


def _figure(records: list[dict]):
    """Panels by round: losses, the learning rate the clients' rounds started at (where their records hold it), and
    megabytes moved (None when there is nothing to draw)."""
    rounds = [r for r in records if "round" in r and "client" not in r]
    if not rounds:
        return None
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend
    from matplotlib.ticker import MaxNLocator

    rates, log = rate_curves([r for r in records if "client" in r])  # "step" is the round
    fig = Figure(figsize=(14 if rates else 10, 3.8), dpi=100, layout="constrained")
    loss_ax, *lr_ax, bytes_ax = fig.subplots(1, 3 if rates else 2)
    evals = [(r["round"], r["eval_loss"]) for r in rounds if r.get("eval_loss") is not None]
    if evals:
        loss_ax.plot(*zip(*evals), "o-", linewidth=2, color="black", label="global adapter: eval loss (server)")
    clients = sorted({r["client"] for r in records if "client" in r})
    for name in clients:
        points = [
            (r["round"], r["client_loss"])
            for r in records
            if r.get("client") == name and r.get("client_loss") is not None
        ]
        if points:
            loss_ax.plot(*zip(*points), ".--", linewidth=1, label=f"{plot_text(name)}: train loss")
    loss_ax.set_xlabel("round")
    loss_ax.set_ylabel("loss (nats / token)")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=8)
    moved = [r for r in rounds if r["round"] > 0]
    if moved:
        xs = [r["round"] for r in moved]
        bytes_ax.bar(
            [x - 0.2 for x in xs], [r["bytes_sent"] / 1e6 for r in moved], width=0.4, label="sent by the server"
        )
        bytes_ax.bar([x + 0.2 for x in xs], [r["bytes_received"] / 1e6 for r in moved], width=0.4, label="received")
        bytes_ax.legend(fontsize=8)
    for ax in lr_ax:  # as the report's learning-rate plot draws a training run's
        for label, points, style in rates.values():
            ax.plot(*zip(*points), f"o{style}", linewidth=1.4, markersize=4, label=plot_text(label))
        if log:
            ax.set_yscale("log")
        if len(rates) > 1:
            ax.legend(fontsize=8)
        ax.set_xlabel("round")
        ax.set_ylabel("learning rate (the round's first local step)")
        ax.grid(alpha=0.3)
    for ax in (loss_ax, *lr_ax, bytes_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    bytes_ax.set_xlabel("round")
    bytes_ax.set_ylabel("MB (adapter tensors + keys)")
    bytes_ax.grid(alpha=0.3, axis="y")
    return fig


def plot_federation(run_dir: str | Path) -> Path | None:
    fig = _figure(read_metrics(Path(run_dir)))
    if fig is None:
        return None
    out = Path(run_dir) / PLOT_FILE
    fig.savefig(out)
    return out


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def federated_section(run_dir: str | Path) -> str | None:
    """An HTML fragment for `tunelab report`: the federation's plot (inline SVG) and a table per round of each
    client's status, train loss, examples and bytes; None when the run is not a federation."""
    state = read_state(run_dir)
    if state is None:
        return None
    records = read_metrics(Path(run_dir))
    parts = [
        f"<p>{_esc(state['strategy'])} over {counted(len(state['clients']), 'client')} "
        f"({_esc(', '.join(state['clients']))}): {state['rounds_done']} of {state['rounds']} rounds done, "
        f"{state['local_steps']} local steps per round.</p>"
    ]
    if lost := lost_clients(state["history"]):  # every client named, as the federation ended saying
        parts.append(f"<p>Clients whose update a round lost: {_esc('; '.join(lost))}.</p>")
    fig = _figure(records)
    if fig is not None:
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
        svg = buf.getvalue()
        drawn = "Loss, learning rate and bytes" if rate_curves(records)[0] else "Loss and bytes"
        parts.append(f"<figure>{svg[svg.index('<svg') :]}<figcaption>{drawn} by round</figcaption></figure>")
    rows = []
    by_round = {r["round"]: r for r in records if "round" in r and "client" not in r}
    for report in state["history"]:
        r = report["round"]
        summary = by_round.get(r, {})
        eval_loss = summary.get("eval_loss")
        head = f"round {r}: eval loss {eval_loss:.4f}" if eval_loss is not None else f"round {r}"
        if report.get("epsilon") is not None:
            head += f", epsilon {report['epsilon']:.3f}"
        if report.get("not_asked"):
            head += f", not asked: {', '.join(report['not_asked'])}"
        if report.get("note"):
            head += f" — {report['note']}"
        rows.append(f'<tr><th colspan="6">{_esc(head)}</th></tr>')
        for c in sorted(report["clients"], key=lambda c: by_name(c["client"])):  # as the round lines order them
            loss = f"{c['train_loss']:.4f}" if c["train_loss"] is not None else ""
            rows.append(
                f"<tr><td>{_esc(c['client'])}</td><td>{_esc(c['status'])}{': ' + _esc(c['reason']) if c['reason'] else ''}</td>"
                f'<td class="num">{loss}</td><td class="num">{c["examples"]}</td>'
                f'<td class="num">{c["bytes_sent"]:,}</td><td class="num">{c["bytes_received"]:,}</td></tr>'
            )
    parts.append(
        "<table><tr><th>client</th><th>status</th><th>train loss</th><th>training rows</th><th>bytes sent to it</th>"
        f"<th>bytes received</th></tr>{''.join(rows)}</table>"
    )
    return "".join(parts)


def _number(n: int | None) -> str:
    """A count for a table cell; blank where none was reported."""
    return "" if n is None else f"{n:,}"


def clients_data_section(run_dir: str | Path) -> str | None:
    """An HTML fragment for the Data section of `tunelab report` on a federation: the server reads only its eval set,
    so data_report.json counts no training rows; this says the training data stayed with the clients and gives what
    each client reported over the rounds (federated.json): its training rows (FedAvg's weight, as its last answered
    round said them), the rounds it trained and the tokens it trained on. None when the run is not a federation."""
    state = read_state(run_dir)
    if state is None:
        return None
    seen: dict[str, dict] = {name: {"rows": None, "rounds": 0, "tokens": 0} for name in state.get("clients", [])}
    for report in state.get("history", []):
        for c in report.get("clients", []):
            entry = seen.setdefault(c["client"], {"rows": None, "rounds": 0, "tokens": 0})
            if c.get("status") == "ok":
                entry["rows"], entry["rounds"] = c.get("examples", 0), entry["rounds"] + 1
                entry["tokens"] += c.get("tokens", 0)
    rows = "".join(
        f"<tr><td>{_esc(name)}</td>"
        f'<td class="num">{_number(s["rows"])}</td><td class="num">{s["rounds"]}</td>'
        f'<td class="num">{_number(s["tokens"] or None)}</td></tr>'
        for name, s in sorted(seen.items(), key=lambda item: by_name(item[0]))
    )
    total = sum(s["rows"] or 0 for s in seen.values())
    return (
        f"<p>The training data stayed with the clients: the server never read it, so the train split below counts "
        f"none, and its eval split (if any) is the server's own eval set (data.eval). The clients reported "
        f"{counted(total, 'training row')} in all (a chat example is one; a text counts its blocks of data.max_length), "
        f"{sum(s['tokens'] for s in seen.values()):,} tokens trained over the rounds:</p>"
        '<table class="clients"><thead><tr><th>client</th><th class="num">training rows</th>'
        '<th class="num">rounds trained</th><th class="num">tokens trained</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )
